"""The one structure that crosses from the data pipeline into the model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

MODALITIES = ("image", "video", "pointcloud")
IGNORE_INDEX = -100  # a label the loss skips (PyTorch cross_entropy's default ignore_index)


@dataclass
class MediaBatch:
    """All media of one modality in a batch, in text order (by sample, then by appearance).

    `data` is what the encoder takes: images [M, C, H, W], videos [M, F, C, H, W], point clouds
    [M, P, 3+C]; `sample_index[m]` is the batch row that owns medium m. `encoded`: `data` already
    holds the encoder's outputs [M, S, D] (read from a frozen-feature cache), so the encoder is skipped.
    """

    data: torch.Tensor
    sample_index: torch.Tensor
    encoded: bool = False

    def to(self, device: torch.device | str) -> "MediaBatch":
        return MediaBatch(self.data.to(device), self.sample_index.to(device), self.encoded)

    def __len__(self) -> int:
        return int(self.data.shape[0])


@dataclass
class Batch:
    """Token ids with media placeholders, the loss labels (IGNORE_INDEX = no loss) and the media."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    media: dict[str, MediaBatch] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    # Packed rows (data.packing): each sample's own position ids, restarting at 0 where a sample starts;
    # attention then stays within a sample. None: one sample per row, positions from the attention mask.
    position_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            media={k: v.to(device) for k, v in self.media.items()},
            ids=list(self.ids),
            position_ids=None if self.position_ids is None else self.position_ids.to(device),
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class MediaSpec:
    """What the data pipeline needs to know about one modality of a built model."""

    transform: "Callable[[Any], torch.Tensor]"
    # Tokens the projector makes of one medium; the fusion's TextLayout turns it into placeholders.
    projected_tokens: int
    # Set by a frozen-feature cache: medium reference -> the encoder's outputs [S, D], replacing load + transform.
    features: "Callable[[Any], torch.Tensor] | None" = None


@dataclass(frozen=True)
class Continuation:
    """Tokens that continue a prompt, for scoring: `ids`, and which of them count (`scored`, default all)."""

    ids: tuple[int, ...]
    scored: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))
        if self.scored is not None:
            object.__setattr__(self, "scored", tuple(bool(s) for s in self.scored))
            if len(self.scored) != len(self.ids):
                raise ValueError(f"Continuation: {len(self.ids)} ids but {len(self.scored)} scored flags")
        if not self.ids:
            raise ValueError("Continuation: no tokens to score")

    @property
    def mask(self) -> tuple[bool, ...]:
        return self.scored if self.scored is not None else (True,) * len(self.ids)
