"""`video`: any image encoder applied frame-wise, plus learned frame (time) embeddings."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from lamm.plain_config import to_plain
from lamm.registry import ENCODERS

from ._utils import check_shape
from .base import Encoder


def uniform_frame_indices(total: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over `total` frames, first and last included (repeats if short)."""
    if total < 1:
        raise ValueError(f"video expects at least one frame, got {total}")
    return np.linspace(0, total - 1, count).round().astype(np.int64)


class VideoTransform:
    """Raw frames -> Tensor[F, C, H, W]: uniform sampling, then the image transform per frame.

    A class rather than a closure so it pickles into DataLoader worker processes.
    """

    def __init__(self, image_transform: Callable[[Any], torch.Tensor], num_frames: int) -> None:
        self.image_transform = image_transform
        self.num_frames = num_frames

    def __call__(self, frames: Any) -> torch.Tensor:
        if isinstance(frames, torch.Tensor):
            frames = frames.cpu().numpy()
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
                raise ValueError(f"video transform expects frames [F, H, W, C] uint8, got {list(frames.shape)}")
            frames = [Image.fromarray(np.ascontiguousarray(f.squeeze(-1) if f.shape[-1] == 1 else f)) for f in frames]
        frames = list(frames)
        picked = [frames[i] for i in uniform_frame_indices(len(frames), self.num_frames)]
        return torch.stack([self.image_transform(f) for f in picked])


@ENCODERS.register("video")
class VideoEncoder(Encoder):
    """Encodes all N*F frames in one batch through the image encoder, then adds frame embeddings."""

    modality = "video"

    def __init__(
        self,
        image_encoder: Mapping[str, Any] | Encoder,
        num_frames: int = 4,
        max_frames: int = 32,
        temporal_pool: str = "none",
    ) -> None:
        super().__init__()
        if temporal_pool not in ("mean", "none"):
            raise ValueError(f"video expects temporal_pool 'mean' or 'none', got {temporal_pool!r}")
        if not 1 <= num_frames <= max_frames:
            raise ValueError(f"video expects 1 <= num_frames <= max_frames, got {num_frames} and {max_frames}")
        if not isinstance(image_encoder, Encoder):
            cfg = dict(to_plain(image_encoder))
            image_encoder = ENCODERS.build(cfg.pop("name"), **cfg)
        if image_encoder.modality != "image":
            raise ValueError(f"video expects an image encoder, got modality {image_encoder.modality!r}")
        self.image_encoder = image_encoder
        self.num_frames = num_frames
        self.max_frames = max_frames
        self.temporal_pool = temporal_pool
        self.output_dim = image_encoder.output_dim
        # Small init so the frame embeddings start as a mild perturbation of the image tokens.
        self.frame_embed = nn.Parameter(torch.randn(max_frames, self.output_dim) * 0.02)

    @property
    def has_pretrained_weights(self) -> bool:
        """The frames' image encoder holds all the weights."""
        return self.image_encoder.has_pretrained_weights

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """uint8 frames [F, H, W, C] (or a list of PIL images) -> Tensor[num_frames, C, H, W]."""
        return VideoTransform(self.image_encoder.transform, self.num_frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Videos [N, F, C, H, W] -> [N, S, D] (mean over time) or [N, F*S, D] (none)."""
        check_shape("video", "clips", x, ["N", f"F<={self.max_frames}", "C", "H", "W"])
        n, f = x.shape[:2]
        if not 1 <= f <= self.max_frames:
            raise ValueError(f"video expects clips [N, F<={self.max_frames}, C, H, W], got {list(x.shape)}")
        tokens = self.image_encoder(x.flatten(0, 1))  # one batch of N*F frames
        tokens = tokens.unflatten(0, (n, f)) + self.frame_embed[:f, None, :]  # [N, F, S, D]
        if self.temporal_pool == "mean":
            return tokens.mean(dim=1)
        return tokens.flatten(1, 2)

    @property
    def frames_per_medium(self) -> int:
        """num_frames, or 1 when frames are mean-pooled."""
        return 1 if self.temporal_pool == "mean" else self.num_frames

    def num_tokens(self) -> int:
        """S of the image encoder, times num_frames unless frames are mean-pooled."""
        per_frame = self.image_encoder.num_tokens()
        return per_frame if self.temporal_pool == "mean" else per_frame * self.num_frames
