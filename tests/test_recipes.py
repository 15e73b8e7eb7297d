"""Every shipped experiment composes, validates and builds with tiny stand-ins for the large weights."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lamm.build import build_model
from lamm.config import compose, group_options
from lamm.testing import TINY_ENCODERS, TINY_LLM

EXPERIMENTS = group_options("experiment")
TRAINERS = group_options("trainer")


@pytest.fixture(scope="module")
def tiny_tower(tmp_path_factory) -> str:
    """A tiny Hugging Face CLIP tower folder for the recipes whose hf_vision path is the user's to give."""
    from lamm.testing import save_tiny_vision_tower

    return str(save_tiny_vision_tower("clip", tmp_path_factory.mktemp("tower")))


def tiny_stand_ins(model: dict, tower: str | None = None) -> dict:
    """Same recipe, tiny weights: the LLM, CLIP, Q-Former and large point encoders shrink; every other key stays."""
    model["llm"] = dict(TINY_LLM, num_layers=8)
    enc = model["encoder"]
    if enc["name"] == "hf_vision":
        enc["path"] = tower
    if model["projector"]["name"] == "qformer":
        model["projector"].update(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    if enc["name"] == "open_clip":
        enc["model_cfg"] = TINY_ENCODERS["open_clip"]["model_cfg"]
        enc["image_size"] = None
    if enc["name"] == "point_bert":
        enc.update({k: v for k, v in TINY_ENCODERS["point_bert"].items() if k != "name"})
    if model["projector"]["name"] == "perceiver":
        model["projector"].update(depth=1, heads=2, dim_head=16)
    if model["fusion"]["name"] == "gated_xattn":
        model["fusion"].update(heads=2, dim_head=16)
    return model


def test_the_published_setups_ship() -> None:
    for name in ("quickstart", "lamm_2d", "lamm_3d", "openflamingo_9b", "multimodal_gpt", "llava15_stage1",
                 "llava15_stage2", "blip2_stage2", "blip2_finetune"):
        assert name in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_builds(experiment: str, tiny_tower: str) -> None:
    cfg = compose("train", [f"experiment={experiment}"])
    OmegaConf.to_yaml(cfg, resolve=False)
    model_cfg = tiny_stand_ins(OmegaConf.to_container(cfg.model, resolve=True), tiny_tower)
    model = build_model(model_cfg)
    assert model.media_specs()
    assert cfg.data.name and cfg.trainer.max_steps > 0
    from lamm.training.optim import OptimConfig, build_optimizer

    optim = OptimConfig.from_config(cfg.optim)  # as lamm-train builds it: interpolations resolved to numbers
    assert all(isinstance(getattr(optim, k), float) for k in ("lr", "gate_lr_multiplier", "encoder_lr_multiplier"))
    build_optimizer(model, optim)


def test_quickstart_settings_per_fusion() -> None:
    from lamm.training.optim import OptimConfig

    from lamm.config import cpu_bf16_is_fast

    fast = cpu_bf16_is_fast()  # language-model steps after the warm-up: 250 / 150, 100 where a step is ~2x slower
    for fusion, lm_steps in (("prefix", 250), ("gated_xattn", 150)):
        steps = 1000 + (lm_steps if fast else 100)
        cfg = compose("train", ["experiment=quickstart", f"model/fusion={fusion}"])
        assert cfg.encoder_warmup.steps == 1000  # the first 1000 of the steps train the CNN alone
        assert OptimConfig.from_config(cfg.optim).encoder_lr_multiplier == 0.3
        assert int(cfg.trainer.max_steps) == int(cfg.per_fusion[fusion].steps) == steps and cfg.data.batch_size == 16
        assert cfg.model.lora.dropout == 0.0 and list(cfg.model.encoder.pooled_tokens) == ["max"]
        # bf16 LLM weights exactly when the trainer autocasts to bf16 (AMX or AVX512-BF16), never one alone
        fast = cpu_bf16_is_fast()
        assert (cfg.trainer.precision, cfg.model.llm.dtype) == (("bf16-mixed", "bfloat16") if fast else ("32-true", "float32"))
        assert cfg.model.llm.attn_implementation == "eager"


def test_published_details() -> None:
    lamm2d = compose("train", ["experiment=lamm_2d"])
    assert lamm2d.model.encoder.model_name == "ViT-L-14" and lamm2d.model.encoder.layer == -1
    assert not lamm2d.model.encoder.include_cls and not lamm2d.model.encoder.final_norm
    assert lamm2d.model.projector.name == "linear" and lamm2d.data.template == "vicuna_lamm"
    assert compose("train", ["experiment=llava15_stage1"]).model.encoder.layer == -2  # LLaVA's choice
    assert (lamm2d.model.lora.r, lamm2d.model.lora.alpha, lamm2d.model.lora.dropout) == (32, 32, 0.1)
    assert list(lamm2d.model.lora.targets) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    of = compose("train", ["experiment=openflamingo_9b"])
    assert of.model.projector.num_latents == 64 and of.model.fusion.every == 4 and of.model.policy.llm == "frozen"
    mmgpt = compose("train", ["experiment=multimodal_gpt"])
    assert mmgpt.model.lora.r == 16 and mmgpt.model.policy.fusion == "lora" and mmgpt.data.name == "mixture"
    assert set(mmgpt.model.lora.fusion_targets) == {"to_q", "to_kv", "to_out", "ff_in", "ff_out"}
    s1, s2 = compose("train", ["experiment=llava15_stage1"]), compose("train", ["experiment=llava15_stage2"])
    assert s1.model.policy.llm == "frozen" and s2.model.policy.llm == "lora" and s2.model.lora.r == 128
    b2, ft = compose("train", ["experiment=blip2_stage2"]), compose("train", ["experiment=blip2_finetune"])
    assert (b2.model.projector.name, b2.model.projector.num_query_tokens, b2.model.encoder.layer) == ("qformer", 32, -2)
    assert list(b2.optim.betas) == [0.9, 0.98] and b2.optim.lr * b2.optim.min_lr_ratio == 5e-5
    assert (ft.model.policy.encoder, ft.model.policy.projector, ft.model.policy.llm) == ("frozen", "full", "frozen")
    assert ft.data.template == "blip2" and ft.optim.lr == 1e-5 and list(ft.required) == ["init_from"]


def test_multimodal_gpt_trains_lora_on_cross_attention() -> None:
    cfg = compose("train", ["experiment=multimodal_gpt"])
    model = build_model(tiny_stand_ins(OmegaConf.to_container(cfg.model, resolve=True)))
    trainable = model.trainable_parameters()
    assert any(n.startswith("fusion.") and ".to_kv.lora_A" in n for n in trainable)
    assert not any(n.startswith(("projectors.", "encoders.")) for n in trainable)
    assert all("lora_" in n for n in trainable if n.startswith(("fusion.", "llm.causal_lm")))


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_configs_validate_with_lightning(trainer: str) -> None:
    """GPU-only strategies cannot run here; their configs still compose, Lightning knows a strategy given by
    name, and one given as a mapping names a builder of lamm/training/strategy.py (tests/test_deepspeed.py
    builds the DeepSpeed ones and checks their ZeRO stage)."""
    from lightning.pytorch.strategies import StrategyRegistry

    from lamm.plain_config import to_plain
    from lamm.training.fsdp import ShardedStrategy, fsdp_options
    from lamm.training.strategy import STRATEGIES

    t = compose("train", [f"trainer={trainer}"]).trainer
    fsdp = fsdp_options(to_plain(t.strategy))
    if fsdp is not None:  # lamm's FSDP2 strategy, built as lamm-train builds it
        assert isinstance(ShardedStrategy(**fsdp), ShardedStrategy)
    elif isinstance(t.strategy, str):
        assert t.strategy == "auto" or t.strategy in StrategyRegistry
    else:
        assert t.strategy.name in STRATEGIES
    assert t.precision in ("32-true", "bf16-mixed", "16-mixed") and t.max_steps > 0
