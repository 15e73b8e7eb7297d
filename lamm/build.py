"""Assemble a MultimodalLM from the `model` config: every part named by registry name."""
from __future__ import annotations

from typing import Any

from lamm.components import build_component
from lamm.model import MultimodalLM
from lamm.plain_config import to_plain
from lamm.policy import TrainablePolicy, apply_policy, split_encoder_node
from lamm.registry import ENCODERS, FUSIONS, LLMS, PROJECTORS


def _per_modality(cfg: Any) -> dict[str, dict] | None:
    """A `{modality: component}` mapping, or None when `cfg` is a single component."""
    cfg = to_plain(cfg) or {}
    return None if "name" in cfg else cfg


def build_model(cfg: Any) -> MultimodalLM:
    """Build the model described by a `model` config node (or a plain dict)."""
    cfg = to_plain(cfg) or {}
    for key in ("encoder", "projector", "fusion", "llm"):
        if key not in cfg:
            raise ValueError(f"model.{key}: missing required key (choose one with model/{key}=NAME)")
    policy = TrainablePolicy.from_config(cfg.get("policy"))
    llm = build_component(LLMS, cfg["llm"], "model.llm")

    encoder_node, _ = split_encoder_node(to_plain(cfg["encoder"]))  # the flag is lamm-train's
    if encoder_node is None:
        raise ValueError("model.encoder: missing required key (choose one with model/encoder=NAME)")
    encoder_cfgs = _per_modality(encoder_node) or {"": encoder_node}
    encoders = {}
    for key, enc_cfg in encoder_cfgs.items():
        where = f"model.encoder.{key}" if key else "model.encoder"
        encoder = build_component(ENCODERS, enc_cfg, where)
        if key and key != encoder.modality:
            raise ValueError(f"{where}: the encoder's modality is {encoder.modality!r}, not {key!r}")
        if encoder.modality in encoders:
            raise ValueError(f"{where}: a second {encoder.modality} encoder; one per modality")
        encoders[encoder.modality] = encoder

    projector_cfgs = _per_modality(cfg["projector"])
    projectors = {}
    for modality, encoder in encoders.items():
        proj_cfg = cfg["projector"] if projector_cfgs is None else projector_cfgs.get(modality)
        if proj_cfg is None:
            raise ValueError(f"model.projector.{modality}: missing (the model has a {modality} encoder)")
        projectors[modality] = build_component(
            PROJECTORS, proj_cfg, "model.projector", in_dim=encoder.output_dim, out_dim=llm.hidden_size
        )

    fusion = build_component(
        FUSIONS, cfg["fusion"], "model.fusion", hidden_size=llm.hidden_size, num_layers=llm.num_layers
    )
    model = MultimodalLM(llm, encoders, projectors, fusion)

    lora = to_plain(cfg.get("lora")) or {}
    if policy.llm == "lora" or policy.fusion == "lora":
        if not lora:
            raise ValueError("model.lora: missing, but model.policy asks for LoRA (choose model/lora=NAME)")
        fusion_targets = lora.pop("fusion_targets", None) or []
        if policy.llm == "lora":
            llm.apply_lora(**lora)
        if policy.fusion == "lora":
            _lora_on_fusion(model, lora, fusion_targets)
    apply_policy(model, policy)
    model.policy = policy
    return model.train(model.training)  # re-apply so frozen parts sit in eval mode


def _lora_on_fusion(model: MultimodalLM, lora: dict, targets: list[str]) -> None:
    """LoRA on the fusion's own layers (Multimodal-GPT tunes the cross-attention this way)."""
    from peft import LoraConfig, inject_adapter_in_model

    if not targets:
        raise ValueError("model.lora.fusion_targets: empty, but model.policy.fusion is 'lora'")
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=targets)
    inject_adapter_in_model(config, model.fusion)
