"""`small_cnn`: a from-scratch conv encoder that learns usefully on a CPU in minutes."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from lamm.registry import ENCODERS

from ._utils import check_shape, simple_image_transform
from .base import Encoder


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    """Halve the resolution, then refine: conv(stride 2)-BN-ReLU-conv-BN-ReLU (BN learned better than GroupNorm)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


POOLINGS = ("mean", "max")


@ENCODERS.register("small_cnn")
class SmallCNNEncoder(Encoder):
    """64x64 RGB -> a 4x4 grid of tokens (by default) with a learned 2D position embedding, then
    optionally one token per pooling in `pooled_tokens` (the grid's features pooled over positions).

    A max-pooled token says "this feature fires somewhere" whatever the position, which a linear
    readout finds far more easily than the same feature spread over the grid; the grid tokens carry
    where things are (position, counting). Figures in docs/results.md (History).
    """

    modality = "image"

    def __init__(
        self, image_size: int = 64, width: int = 256, base_channels: int = 32, num_stages: int = 4,
        pooled_tokens: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if num_stages < 1 or image_size % (2**num_stages):
            raise ValueError(
                f"small_cnn expects image_size divisible by 2**num_stages, got {image_size} and {num_stages}"
            )
        bad = [p for p in pooled_tokens if p not in POOLINGS]
        if bad or len(set(pooled_tokens)) != len(pooled_tokens):
            raise ValueError(f"small_cnn pooled_tokens must be distinct names from {list(POOLINGS)}, "
                             f"got {list(pooled_tokens)}")
        self.image_size = image_size
        self.output_dim = width
        self.grid = image_size // 2**num_stages
        self.pooled_tokens = tuple(pooled_tokens)
        # Channels double per stage; the last stage emits the token width directly.
        chans = [3] + [base_channels * 2**i for i in range(num_stages - 1)] + [width]
        self.stages = nn.Sequential(*(_stage(a, b) for a, b in zip(chans[:-1], chans[1:])))
        # One learned embedding per output token: grid positions, then each pooled token's own.
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_tokens(), width) * 0.02)

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised Tensor[3, image_size, image_size]."""
        return simple_image_transform(self.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] -> tokens [N, num_tokens(), width]: the grid row by row, then the pooled ones."""
        check_shape("small_cnn", "images", x, ["N", 3, self.image_size, self.image_size])
        tokens = self.stages(x).flatten(2).transpose(1, 2)  # [N, grid*grid, width]
        pooled = [tokens.amax(1, keepdim=True) if p == "max" else tokens.mean(1, keepdim=True)
                  for p in self.pooled_tokens]
        return torch.cat([tokens, *pooled], 1) + self.pos_embed

    def num_tokens(self) -> int:
        """grid * grid tokens (16 for the default 64px / 4 stages) + one per pooled token."""
        return self.grid * self.grid + len(self.pooled_tokens)
