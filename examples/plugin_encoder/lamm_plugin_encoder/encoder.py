"""`my_encoder`: an MLP-Mixer image encoder (Tolstikhin et al., 2021), trained from scratch.

Patches are embedded by a strided conv, then each block mixes information across patches (an MLP
over the token axis) and within each patch (an MLP over channels). No attention and no position
embedding: the token-mixing MLP has a weight per patch position, so it knows where each patch is.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lamm.encoders.base import Encoder
from lamm.registry import ENCODERS


def _mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))


class MixerBlock(nn.Module):
    """Token mixing across the S patches, then channel mixing within each, both pre-norm residual."""

    def __init__(self, num_tokens: int, width: int, token_mlp_dim: int, channel_mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(width)
        self.token_mlp = _mlp(num_tokens, token_mlp_dim, dropout)
        self.channel_norm = nn.LayerNorm(width)
        self.channel_mlp = _mlp(width, channel_mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, S, D] -> [N, S, D]."""
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


def _to_rgb(image: Any) -> Any:
    # Module level, not a lambda, so the transform pickles into DataLoader worker processes.
    return image.convert("RGB")


@ENCODERS.register("my_encoder")
class MixerEncoder(Encoder):
    """RGB image -> (image_size / patch_size)^2 tokens of `width`."""

    modality = "image"

    def __init__(self, image_size: int = 64, patch_size: int = 16, width: int = 256, depth: int = 2,
                 token_mlp_dim: int = 64, channel_mlp_dim: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"my_encoder: image_size {image_size} is not divisible by patch_size {patch_size}")
        self.image_size = image_size
        self.output_dim = width  # lamm sizes the projector's input from this
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.blocks = nn.Sequential(
            *(MixerBlock(self.grid**2, width, token_mlp_dim, channel_mlp_dim, dropout) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(width)

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> Tensor[3, image_size, image_size] scaled to [-1, 1]."""
        from torchvision import transforms as T

        return T.Compose([
            T.Lambda(_to_rgb),
            T.Resize((self.image_size, self.image_size), antialias=True),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, image_size, image_size] -> tokens [N, grid*grid, width]."""
        expected = (3, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"my_encoder expects images [N, {', '.join(map(str, expected))}], got {list(x.shape)}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [N, grid*grid, width]
        return self.norm(self.blocks(tokens))

    def num_tokens(self) -> int:
        """grid * grid: 16 for 64px images and 16px patches."""
        return self.grid**2
