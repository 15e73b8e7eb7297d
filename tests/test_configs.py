"""Every shipped YAML composes with Hydra, names registered components with valid arguments, and builds."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lamm.build import build_model
from lamm.components import check_component
from lamm.config import compose, group_options
from lamm.policy import split_encoder_node
from lamm.registry import ENCODERS, FUSIONS, LLMS, PROJECTORS
from lamm.testing import TINY_ENCODERS, TINY_LLM, save_tiny_vision_tower

MODEL_GROUPS = ["encoder", "projector", "fusion", "llm", "lora", "policy"]
CASES = [(g, o) for g in MODEL_GROUPS for o in group_options(f"model/{g}")]
# Stand-ins for parts whose real size or weights do not belong in a unit test.
LARGE_ENCODERS = {"open_clip": TINY_ENCODERS["open_clip"]["model_cfg"]}
NOT_BUILT_HERE = {"smollm2_135m": "built by the slow test in test_llm.py", "hf": "needs weights", "gguf": "needs a file"}


def test_groups_ship_options() -> None:
    for group in MODEL_GROUPS:
        assert group_options(f"model/{group}"), group


@pytest.mark.parametrize("group,option", CASES)
def test_shipped_yaml_composes_validates_and_builds(group: str, option: str, tmp_path) -> None:
    cfg = compose("train", [f"model/{group}={option}"])
    model = OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=False)
    # The keys bind to the registered factories' signatures (no building needed).
    check_component(ENCODERS, split_encoder_node(model["encoder"])[0], "model.encoder")  # less lamm-train's flag
    check_component(PROJECTORS, model["projector"], "model.projector", fixed=("in_dim", "out_dim"))
    check_component(FUSIONS, model["fusion"], "model.fusion", fixed=("hidden_size", "num_layers"))
    check_component(LLMS, model["llm"], "model.llm")

    if model["llm"]["name"] in NOT_BUILT_HERE or model["llm"].get("path"):
        if group == "llm":
            return  # arguments validated above; loading needs the real weights
    model["llm"] = dict(TINY_LLM)
    encoder = model["encoder"]
    if encoder["name"] == "open_clip":
        encoder["model_cfg"] = LARGE_ENCODERS["open_clip"]
    if encoder["name"] == "timm":
        encoder.update(model_name="vit_tiny_patch16_224", img_size=32)
    if encoder["name"] == "hf_vision":  # the folder is the tower: a tiny one saved by transformers
        encoder["path"] = str(save_tiny_vision_tower("siglip" if "siglip" in option else "clip_full", tmp_path))
    built = build_model(model)
    assert built.media_specs()
    assert isinstance(built.fusion, FUSIONS.get(model["fusion"]["name"]))


def test_config_errors_name_the_key() -> None:
    cfg = OmegaConf.to_container(compose("train", ["model/llm=tiny_random"]).model)
    cfg["encoder"]["colour"] = "red"
    with pytest.raises(ValueError, match=r"^model\.encoder\.colour: encoder 'small_cnn' has no parameter 'colour'\. "
                                         r"Parameters: "):
        build_model(cfg)
    cfg = OmegaConf.to_container(compose("train", ["model/llm=tiny_random"]).model)
    cfg["policy"]["llm"] = "sometimes"
    with pytest.raises(ValueError, match=r"model.policy.llm: 'sometimes' is not one of"):
        build_model(cfg)
    del cfg["fusion"]
    with pytest.raises(ValueError, match=r"model.fusion: missing"):
        build_model(cfg)


def test_cpu_bf16_resolver_picks_by_cpu(monkeypatch) -> None:
    import lamm.config as config

    config.register_resolvers()
    config.register_resolvers()  # idempotent
    node = OmegaConf.create({"precision": "${cpu_bf16:bf16-mixed,32-true}"})
    for fast, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(config, "cpu_bf16_is_fast", lambda fast=fast: fast)
        assert node.precision == expected


def test_importing_lamm_registers_no_resolver() -> None:
    """Resolvers are registered by an explicit call (compose, the console scripts), not as an import side effect."""
    probe = ("import lamm, lamm.config, lamm.cli.train, lamm.cli.eval; from omegaconf import OmegaConf; "
             "print(OmegaConf.has_resolver('cpu_bf16')); lamm.config.compose('train', ['experiment=quickstart']); "
             "print(OmegaConf.has_resolver('cpu_bf16'))")
    out = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]


def test_lamm_train_resolves_cpu_bf16_in_the_printed_config() -> None:
    """`lamm-train ... --cfg job --resolve` composes through Hydra's own app, so the entry point registered it."""
    from lamm.config import cpu_bf16_is_fast

    out = subprocess.run([str(Path(sys.executable).parent / "lamm-train"), "experiment=quickstart", "--cfg", "job",
                          "--resolve"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"precision: {'bf16-mixed' if cpu_bf16_is_fast() else '32-true'}" in out.stdout
    assert "cpu_bf16" not in out.stdout
