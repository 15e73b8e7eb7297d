"""AdamW parameter groups and the warmup + cosine schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    """The `optim` config node."""

    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    gate_lr_multiplier: float = 1.0  # tanh gates start at 0 and need a larger step to open
    encoder_lr_multiplier: float = 1.0
    fusion_lr_multiplier: float = 1.0  # cross-attention blocks start from scratch beside a pretrained LLM

    @classmethod
    def from_config(cls, node) -> "OptimConfig":
        """From the `optim` config node, interpolations resolved (recipes may compute values)."""
        from omegaconf import OmegaConf

        return cls(**OmegaConf.to_container(node, resolve=True))


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norms, biases, gates, embeddings and learned queries are not weight-decayed."""
    lowered = name.lower()
    return param.ndim < 2 or any(k in lowered for k in ("norm", "embed", "emb.", "_emb", "latents", "gate", "pos"))


def param_groups(model: nn.Module, cfg: OptimConfig, split_encoders: bool = False) -> list[dict]:
    """Trainable parameters split by (weight decay?, learning-rate multiplier), and with
    `split_encoders` by encoder or not (an encoder warm-up schedules those groups apart; off, the
    groups stay as before, so older optimizer states still load)."""
    groups: dict[tuple[bool, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = 1.0
        encoder = name.startswith("encoders.") or ".encoders." in name
        if name.endswith(("attn_gate", "ff_gate")):
            mult = cfg.gate_lr_multiplier
        elif encoder:
            mult = cfg.encoder_lr_multiplier
        elif name.startswith("fusion.") or ".fusion." in name:
            mult = cfg.fusion_lr_multiplier
        groups.setdefault((_no_decay(name, param), mult, encoder and split_encoders), []).append(param)
    return [
        # `encoder` marks the groups an encoder warm-up trains (lamm/training/encoder_warmup.py).
        {"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr": cfg.lr * mult,
         "encoder": encoder}
        for (no_decay, mult, encoder), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, extra_groups: list[dict] = (),
                    split_encoders: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, split_encoders)
    if not groups:
        raise ValueError("model.policy leaves nothing to train: every part is frozen")
    return torch.optim.AdamW([*groups, *extra_groups], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier: linear warmup, then cosine from 1 to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def phased_schedule(groups: list[dict], cfg: OptimConfig, total_steps: int, warmup_phase_steps: int,
                    warmup_phase_lr: float, warmup_phase_ramp: int) -> list:
    """One LR multiplier per parameter group for a run whose first `warmup_phase_steps` warm up the
    encoders (their groups and the `warmup_head` groups at `warmup_phase_lr`, everything else at 0),
    after which every group but the heads follows warmup + cosine over the remaining steps."""
    main = warmup_cosine(cfg.warmup_steps, total_steps - warmup_phase_steps, cfg.min_lr_ratio)
    phase = warmup_cosine(warmup_phase_ramp, warmup_phase_steps, cfg.min_lr_ratio)

    def for_group(group: dict):
        head, encoder = group.get("warmup_head", False), group.get("encoder", False)
        phase_scale = warmup_phase_lr / group["lr"] if (head or encoder) and group["lr"] > 0 else 0.0

        def factor(step: int) -> float:
            if step < warmup_phase_steps:
                return phase_scale * phase(step)
            return 0.0 if head else main(step - warmup_phase_steps)

        return factor

    return [for_group(g) for g in groups]
