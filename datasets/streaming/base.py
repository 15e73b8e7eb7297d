"""The contract of a resumable stream and the item it yields."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from torch.utils.data import IterableDataset

from lamm.datasets.errors import SkipCounter, WorkerDataError
from lamm.datasets.processor import ProcessedSample

Position = dict[str, Any]  # plain ints, floats, lists and dicts: a checkpoint loads it with weights_only


@dataclass
class StreamItem:
    """A sample (or, under `on_error: raise` in a worker, the error to re-raise), the position of its
    reader just after it, and the epoch of its reader when it was read."""

    sample: ProcessedSample | WorkerDataError
    position: Position
    epoch: int


class ResumableStream(IterableDataset):
    """A dataset read as `total` disjoint reader streams; reader `slot` restarts at any saved position.

    Every epoch each reader reads its share once, so over all readers an epoch covers every sample
    exactly once; then the reader starts its next epoch (a new seeded order) on its own.
    """

    name: str = "stream"
    epoch: int = 0  # the epoch plain iteration reads (`set_epoch`)

    @property
    def skipped(self) -> SkipCounter:
        raise NotImplementedError

    def stream(self, slot: int, total: int, start: Position | None = None) -> Iterator[StreamItem]:
        """Reader `slot` of `total`, from `start` (None: the beginning of epoch 0), endlessly."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[ProcessedSample | WorkerDataError]:
        """One epoch of this process's reader (rank and worker from torch / the environment)."""
        from webdataset.utils import pytorch_worker_info

        rank, world_size, worker, num_workers = pytorch_worker_info()
        total = world_size * num_workers
        slot = worker * world_size + rank
        for item in self.stream(slot, total, self.epoch_start()):
            if item.epoch != self.epoch:
                return
            yield item.sample

    def epoch_start(self) -> Position | None:
        """The position where epoch `self.epoch` starts (None: epoch 0)."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """Which epoch plain iteration (`iter(dataset)`) reads."""
        self.epoch = epoch
