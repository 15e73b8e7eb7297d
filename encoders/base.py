"""The encoder contract: what the rest of the model needs from a media encoder."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import nn

from lamm.blocks import repeated_blocks


class Encoder(nn.Module, ABC):
    """Maps a batch of one modality's media to tokens `[N, S, output_dim]`.

    Subclasses set `modality` ("image" | "video" | "pointcloud") and `output_dim`, and expose
    `transform`: what the data pipeline applies to one raw medium (a PIL image, a video's frames
    as a uint8 array [F, H, W, C], or a point array [P, 3+C]) to produce one element of the
    batch tensor `forward` takes.
    """

    modality: str = "image"
    output_dim: int
    # Each medium's tokens are this many frames of equal length, frame-major (a video's frames).
    frames_per_medium: int = 1

    @property
    @abstractmethod
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """Per-medium preprocessing for the data pipeline."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode `x` into `[N, S, output_dim]` tokens."""

    @abstractmethod
    def num_tokens(self) -> int:
        """S, the tokens emitted per medium for media prepared by `transform`."""

    @property
    def has_pretrained_weights(self) -> bool:
        """True when construction loaded published or trained weights (a tag, a file, a folder).

        lamm-train refuses to freeze an encoder that has none (its features would be random noise)
        unless `model.encoder.allow_random_frozen=true`; encoders that load weights override this.
        """
        return False

    def wrap_modules(self) -> list[nn.Module]:
        """The repeated blocks a sharded strategy wraps (and activation checkpointing recomputes) one by
        one; by default the longest run of same-class blocks inside the encoder, [] when it has none."""
        return repeated_blocks(self)
