"""A map-style dataset read as a resumable stream (so it can join a mixture of streams)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Dataset

from lamm.datasets.errors import DataError, SkipCounter, WorkerDataError
from lamm.datasets.streaming.base import Position, ResumableStream, StreamItem


class MapStream(ResumableStream):
    """Epoch e is a permutation of the indices seeded by (seed, e) (or the identity without shuffling);
    reader `slot` of `total` takes every `total`-th index of it from `slot` on."""

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, name: str = "") -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.name = name or getattr(dataset, "name", "") or type(dataset).__name__

    @property
    def skipped(self) -> SkipCounter:
        return self.dataset.skipped

    def epoch_start(self) -> Position:
        return {"epoch": self.epoch, "offset": 0}

    def _share(self, epoch: int, slot: int, total: int) -> np.ndarray:
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return order[slot::total]

    def stream(self, slot: int, total: int, start: Position | None = None) -> Iterator[StreamItem]:
        if len(self.dataset) < total:
            raise ValueError(f"dataset {self.name!r} has {len(self.dataset)} samples, fewer than its {total} "
                             "readers (ranks x DataLoader workers)")
        epoch, offset = (int(start["epoch"]), int(start["offset"])) if start else (0, 0)
        while True:
            share, produced = self._share(epoch, slot, total), False
            for k in range(offset, len(share)):
                out = self.dataset[int(share[k])]  # None: skipped and counted by the dataset
                if out is None:
                    continue
                produced = True
                yield StreamItem(out, {"epoch": epoch, "offset": k + 1}, epoch)
                if isinstance(out, WorkerDataError):
                    return
            if not produced and offset == 0:
                raise DataError(f"reader {slot} of {total} found no usable sample in a whole epoch",
                                file=self.name)
            epoch, offset = epoch + 1, 0
