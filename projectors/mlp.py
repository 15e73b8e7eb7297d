"""`mlp`: LLaVA-1.5's projector, Linear -> (GELU -> Linear) x (depth - 1); K = S.

`depth=2` is LLaVA-1.5's `mlp2x_gelu`; `depth=1` degenerates to a single Linear.
`bias=False` matches LLaVA checkpoints saved with `multimodal_projector_bias: false`.
"""
from __future__ import annotations

import torch
from torch import nn

from lamm.projectors._checks import check_input
from lamm.projectors.base import Projector
from lamm.registry import PROJECTORS


@PROJECTORS.register("mlp")
class MLPProjector(Projector):
    """Token-wise MLP; hidden width is `out_dim` (as in LLaVA-1.5) unless `hidden_dim` is given."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, hidden_dim: int | None = None,
                 bias: bool = True) -> None:
        super().__init__(in_dim, out_dim)
        if depth < 1:
            raise ValueError(f"mlp projector depth must be >= 1, got {depth}")
        hidden = hidden_dim or out_dim
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            if i > 0:
                layers.append(nn.GELU())
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        self.net = nn.Sequential(*layers)
        self.depth = depth

    def num_tokens(self, num_input_tokens: int) -> int:
        """K = S."""
        return num_input_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, S, in_dim]` -> `[N, S, out_dim]`."""
        check_input(x, self.in_dim, "mlp")
        return self.net(x)
