"""The projector contract: media tokens from an encoder's width to the LLM's width."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Projector(nn.Module, ABC):
    """Built from `(in_dim, out_dim, **cfg)`; maps `[N, S, in_dim]` to `[N, K, out_dim]`."""

    # Keywords `forward` also takes, which the model then passes: "media_positions" (LongTensor [N],
    # each medium's index among the media of its sample) and "frames" (frames per medium, frame-major).
    time_inputs: frozenset[str] = frozenset()

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim

    @abstractmethod
    def num_tokens(self, num_input_tokens: int) -> int:
        """K, the number of tokens emitted for S input tokens (placeholders prefix fusion needs)."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project `[N, S, in_dim]` to `[N, K, out_dim]`."""

    def wrap_modules(self) -> list[nn.Module]:
        """The repeated blocks a sharded strategy wraps (and activation checkpointing recomputes) one by
        one; [] = the projector is a single unit (linear and MLP projectors are small)."""
        return []
