"""`linear`: one Linear layer per token (LLaVA-1 style); K = S."""
from __future__ import annotations

import torch
from torch import nn

from lamm.projectors._checks import check_input
from lamm.projectors.base import Projector
from lamm.registry import PROJECTORS


@PROJECTORS.register("linear")
class LinearProjector(Projector):
    """Token-wise `Linear(in_dim, out_dim)`; keeps the number of tokens."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__(in_dim, out_dim)
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    def num_tokens(self, num_input_tokens: int) -> int:
        """K = S."""
        return num_input_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, S, in_dim]` -> `[N, S, out_dim]`."""
        check_input(x, self.in_dim, "linear")
        return self.proj(x)
