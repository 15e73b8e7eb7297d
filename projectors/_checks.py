"""Shared input validation for projectors: fail early with the expected and the actual shape."""
from __future__ import annotations

import torch


def check_input(x: torch.Tensor, in_dim: int, who: str) -> None:
    """Raise a one-line ValueError unless `x` is `[N, S, in_dim]`."""
    if x.dim() != 3 or x.shape[-1] != in_dim:
        raise ValueError(f"{who} projector expects [N, S, {in_dim}], got {list(x.shape)}")
