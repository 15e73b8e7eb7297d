"""`small_cnn`: a from-scratch conv encoder that learns usefully on a CPU in minutes."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lamm.registry import ENCODERS

from ._utils import check_shape, simple_image_transform
from .base import Encoder


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    """Halve the resolution, then refine: conv(stride 2)-BN-ReLU-conv-BN-ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


@ENCODERS.register("small_cnn")
class SmallCNNEncoder(Encoder):
    """64x64 RGB -> a 4x4 grid of tokens (by default) with a learned 2D position embedding."""

    modality = "image"

    def __init__(
        self, image_size: int = 64, width: int = 256, base_channels: int = 32, num_stages: int = 4
    ) -> None:
        super().__init__()
        if num_stages < 1 or image_size % (2**num_stages):
            raise ValueError(
                f"small_cnn expects image_size divisible by 2**num_stages, got {image_size} and {num_stages}"
            )
        self.image_size = image_size
        self.output_dim = width
        self.grid = image_size // 2**num_stages
        # Channels double per stage; the last stage emits the token width directly.
        chans = [3] + [base_channels * 2**i for i in range(num_stages - 1)] + [width]
        self.stages = nn.Sequential(*(_stage(a, b) for a, b in zip(chans[:-1], chans[1:])))
        # BatchNorm + ReLU measured better than a GroupNorm variant in the design prototype.
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid, width) * 0.02)

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised Tensor[3, image_size, image_size]."""
        return simple_image_transform(self.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] -> tokens [N, grid*grid, width]."""
        check_shape("small_cnn", "images", x, ["N", 3, self.image_size, self.image_size])
        feats = self.stages(x)  # [N, width, grid, grid]
        return feats.flatten(2).transpose(1, 2) + self.pos_embed

    def num_tokens(self) -> int:
        """grid * grid tokens, 16 for the default 64px / 4 stages."""
        return self.grid * self.grid
