"""`small_vit`: a from-scratch ViT with configurable width, depth and patch size."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lamm.registry import ENCODERS

from ._utils import check_shape, simple_image_transform
from .base import Encoder


@ENCODERS.register("small_vit")
class SmallViTEncoder(Encoder):
    """Patchify conv + learned position embedding + pre-norm transformer layers."""

    modality = "image"

    def __init__(
        self,
        image_size: int = 112,
        patch_size: int = 16,
        width: int = 384,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        include_cls: bool = False,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"small_vit expects image_size divisible by patch_size, got {image_size} and {patch_size}")
        self.image_size = image_size
        self.output_dim = width
        self.include_cls = include_cls
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if include_cls else None
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches + include_cls, width) * 0.02)
        # A ModuleList rather than nn.TransformerEncoder: the latter warns about nested tensors
        # with norm_first and adds nothing we need.
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, int(width * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)  # pre-norm blocks leave the residual stream un-normalised

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised Tensor[3, image_size, image_size]."""
        return simple_image_transform(self.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] -> tokens [N, patches (+1 cls), width]."""
        check_shape("small_vit", "images", x, ["N", 3, self.image_size, self.image_size])
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def num_tokens(self) -> int:
        """(image_size / patch_size)^2 patches, plus one when include_cls."""
        return self.num_patches + int(self.include_cls)
