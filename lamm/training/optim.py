"""AdamW parameter groups and the warmup + cosine schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lamm.policy import part_of


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
        from lamm.plain_config import to_plain

        return cls(**to_plain(node))


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norms, biases, gates, embeddings and learned queries are not weight-decayed."""
    lowered = name.lower()
    return param.ndim < 2 or any(k in lowered for k in ("norm", "embed", "emb.", "_emb", "latents", "gate", "pos"))


def param_groups(model: nn.Module, cfg: OptimConfig, apart: tuple[str, ...] = ()) -> list[dict]:
    """A MultimodalLM's trainable parameters grouped by (weight decay?, learning-rate multiplier), and
    by policy part for the parts named in `apart` (a training method that schedules them on their own
    asks for that; without it the groups stay as they were, so older optimizer states still load).
    Each group's `part` is its part when in `apart`, else ""."""
    groups: dict[tuple[bool, float, str], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = part_of(name)
        if name.endswith(("attn_gate", "ff_gate")):
            mult = cfg.gate_lr_multiplier
        else:
            mult = {"encoder": cfg.encoder_lr_multiplier, "fusion": cfg.fusion_lr_multiplier}.get(part, 1.0)
        groups.setdefault((_no_decay(name, param), mult, part if part in apart else ""), []).append(param)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr": cfg.lr * mult, "part": part}
        for (no_decay, mult, part), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """AdamW over `groups` (default: `param_groups(model, cfg)`)."""
    groups = param_groups(model, cfg) if groups is None else groups
    if not any(g["params"] for g in groups):
        raise ValueError("model.policy leaves nothing to train: every part is frozen")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup, then cosine from 1 to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
