"""Training methods: self-contained ways of training (e.g. an encoder warm-up) that LammModule consults.

A method is a Lightning callback (so it can use any Lightning hook) that LammModule also asks, through
the small interface below, for the three things a callback cannot reach from outside:

- `modules()`: trainable parts outside the model (e.g. a probe head). LammModule holds them under
  `name`, so DDP synchronises them and checkpoints carry them under `name.` (exact resume); the export
  and `load_for_inference` take only the model's own `model.` tensors, so they never see them.
- `optimization(...)`: the optimizer's parameter groups and per-group LR factors for the whole run,
  or None to keep the default (AdamW groups + warmup/cosine). At most one method may set them.
- `loss(step, model, batch)`: this step's loss, or None for the language-model loss.

`build_methods` creates the methods whose config node is in the run's config (see `BUILT_IN`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import lightning as L
import torch
from torch import nn

# Config node -> the method class it configures; imported only when the node is present.
BUILT_IN = {"encoder_warmup": "lamm.training.encoder_warmup:EncoderWarmup"}


@dataclass
class OptimizationPlan:
    """AdamW parameter groups and one LR multiplier per group (a function of the optimizer step)."""

    groups: list[dict]
    factors: list[Callable[[int], float]]


class TrainingMethod(L.Callback):
    """Base of a training method: override what it changes; the defaults change nothing."""

    name: str = ""  # attribute of LammModule holding `modules()`, and their checkpoint key prefix
    leaves_parameters_unused: bool = False  # some steps give trained parameters no gradient (DDP must be told)

    def modules(self) -> nn.Module | None:
        return None

    def optimization(self, model: nn.Module, optim: Any, max_steps: int) -> OptimizationPlan | None:
        return None

    def loss(self, step: int, model: nn.Module, batch: Any) -> torch.Tensor | None:
        return None

    def loss_phases(self) -> list[tuple[int, str]]:
        """(first step after the phase, label) for each leading phase whose loss differs in kind."""
        return []


def build_methods(cfg: Any, model: nn.Module, max_steps: int) -> list[TrainingMethod]:
    """The methods a run's config turns on, in `BUILT_IN` order (each `from_config` returns None when off)."""
    methods = []
    for node, target in BUILT_IN.items():
        if cfg.get(node) is None:
            continue
        module_name, class_name = target.split(":")
        method = getattr(importlib.import_module(module_name), class_name).from_config(cfg[node], model, max_steps)
        if method is not None:
            methods.append(method)
    return methods
