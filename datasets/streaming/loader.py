"""What the training DataLoader iterates for a stream: one endless reader per (rank, worker), each
resuming at its saved position, and a collator that hands the position on with the batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from torch.utils.data import IterableDataset, get_worker_info

from lamm.batch import Batch
from lamm.datasets.errors import WorkerDataError
from lamm.datasets.streaming.base import Position, ResumableStream, StreamItem


def reader_slot(rank: int, world_size: int, reader: int) -> int:
    """The stream slot of worker `reader` on `rank`: readers interleave across ranks, so with shards
    split by slot every rank gets an even share of the shards (not ranks 0..k the larger ones)."""
    return reader * world_size + rank


class ReaderLoop(IterableDataset):
    """Each DataLoader worker streams as reader (worker + rotate) % num_workers from that reader's position.

    The DataLoader takes batches from its workers in turn, starting with worker 0 on every new
    iterator; after `batches` batches the next one is reader `batches % num_workers`'s, so a resumed
    loader rotates the readers by that much and the batch order goes on unchanged.
    """

    def __init__(self, stream: ResumableStream, rank: int, world_size: int, num_workers: int,
                 positions: Sequence[Position | None] = (), batches: int = 0) -> None:
        self.stream = stream
        self.rank, self.world_size = rank, world_size
        self.readers = max(1, num_workers)
        self.positions = list(positions) or [None] * self.readers
        self.rotate = batches % self.readers

    def __iter__(self) -> Iterator[tuple[StreamItem, int]]:
        info = get_worker_info()
        reader = ((info.id if info is not None else 0) + self.rotate) % self.readers
        slot = reader_slot(self.rank, self.world_size, reader)
        for item in self.stream.stream(slot, self.world_size * self.readers, self.positions[reader]):
            yield item, reader


@dataclass
class StreamBatch:
    """A batch, the reader that made it, that reader's position after it, and each sample's epoch."""

    batch: Batch
    reader: int
    position: Position
    epochs: list[int]


class StreamCollator:
    """Collates a reader's items with the sample collator and keeps the reader's last position."""

    def __init__(self, collate: Callable[[list], Batch | WorkerDataError | None]) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[tuple[StreamItem, int]]) -> StreamBatch | WorkerDataError | None:
        samples = [item.sample for item, _ in items]
        batch = self.collate(samples)
        if batch is None or isinstance(batch, WorkerDataError):
            return batch
        last, reader = items[-1]
        return StreamBatch(batch, reader, last.position, [item.epoch for item, _ in items])
