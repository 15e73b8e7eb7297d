"""Samples streamed from shards, split across readers, shuffled by seed, resumable at any sample.

Reader `slot` of `total` (= ranks x DataLoader workers) reads the shards `assign_shards` gives it, in
an order shuffled per epoch with the same seed in every reader (so the split stays a partition).
The within-shard shuffle is a seeded block shuffle: the reader takes `shuffle_buffer` consecutive
samples (raw bytes, nothing decoded), permutes them by (seed, epoch, slot, block) and yields them in
that order. Unlike a reservoir buffer, a block's content and order follow from where it starts, so
the resume position is four numbers: epoch, block, where the block starts (shard, sample index) and
how many of its samples were already handed out.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator

import numpy as np
import torch

from lamm.datasets.base import ErrorPolicy, process_or_skip
from lamm.datasets.errors import DataError, SkipCounter, WorkerDataError, in_worker
from lamm.datasets.processor import Processor
from lamm.datasets.sample import Sample
from lamm.datasets.streaming.base import Position, ResumableStream, StreamItem

log = logging.getLogger(__name__)

ReadShard = Callable[[str, int], Iterator[tuple[int, Any]]]  # (url, first index) -> (index, raw sample)
ToSample = Callable[[Any], Sample]  # raw sample -> Sample, DataError when it is malformed


def assign_shards(num_shards: int, slot: int, total: int) -> tuple[list[int], int, int]:
    """Which shards reader `slot` of `total` streams, and which of their samples.

    Returns (shard indices, member, group): the reader keeps sample j of each of its shards when
    j % group == member. With at least `total` shards each reader gets whole shards (group 1); with
    fewer, reader t streams shard t % num_shards, shared with the other readers of that shard, which
    keep every group-th sample each. Either way every sample goes to exactly one reader, and no
    reader (so no rank) is left without data.
    """
    if num_shards >= total:
        return list(range(slot, num_shards, total)), 0, 1
    shard = slot % num_shards
    sharing = range(shard, total, num_shards)
    return [shard], sharing.index(slot), len(sharing)


@dataclass(frozen=True)
class _Raw:
    shard: int  # index in the reader's shard list
    index: int  # sample index within that shard
    data: Any


class ShardStream(ResumableStream):
    """A resumable stream over shard files read by `read_shard` and parsed by `to_sample`."""

    def __init__(self, urls: list[str], read_shard: ReadShard, to_sample: ToSample, processor: Processor,
                 policy: ErrorPolicy, shuffle: bool = False, shuffle_buffer: int = 0, seed: int = 0,
                 name: str = "shards") -> None:
        if not urls:
            raise ValueError(f"data config for dataset {name!r} names no shards")
        self.urls = list(urls)
        self.read_shard = read_shard
        self.to_sample = to_sample
        self.processor = processor
        self.policy = policy
        self.shuffle = shuffle
        self.block_size = max(1, int(shuffle_buffer)) if shuffle else 1
        self.seed = seed
        self.name = name
        # Shared so the warning is logged once per run, though workers are new processes.
        self._warned = torch.zeros(1, dtype=torch.uint8).share_memory_()

    @property
    def skipped(self) -> SkipCounter:
        return self.policy.counter

    def epoch_start(self) -> Position:
        return {"epoch": self.epoch, "block": 0, "shard": 0, "offset": 0, "emitted": 0}

    def shards_of(self, epoch: int, slot: int, total: int) -> tuple[list[str], int, int]:
        """The shard URLs reader `slot` reads in `epoch`, and its (member, group) share of them."""
        urls = list(self.urls)
        if self.shuffle:  # the same permutation in every reader, so the split stays a partition
            random.Random(f"{self.seed}:{epoch}").shuffle(urls)
        shards, member, group = assign_shards(len(urls), slot, total)
        return [urls[i] for i in shards], member, group

    def _warn_few_shards(self, slot: int, total: int) -> None:
        if len(self.urls) >= total or slot != 0 or self._warned.item():
            return
        self._warned.fill_(1)
        log.warning(
            "%s %r: %d shard(s) for %d reader(s) (ranks x DataLoader workers); readers share shards and each "
            "keeps part of their samples (no sample lost or repeated), but every reader reads a whole shard: "
            "write at least %d shards to stream efficiently", type(self).__name__, self.name, len(self.urls), total, total)

    def _raw(self, urls: list[str], member: int, group: int, shard: int, offset: int) -> Iterator[_Raw]:
        for s in range(shard, len(urls)):
            try:
                for index, data in self.read_shard(urls[s], offset if s == shard else 0):
                    if index % group == member:
                        yield _Raw(s, index, data)
            except DataError as err:  # a broken shard: raise, or count it and go on with the next shard
                self.policy.handle(err)

    def _process(self, raw: Any):
        try:
            sample = self.to_sample(raw)
        except DataError as err:
            self.policy.handle(err)
            return None
        return process_or_skip(sample, self.processor, self.policy)

    def _epoch(self, slot: int, total: int, pos: Position) -> Iterator[StreamItem]:
        epoch = int(pos["epoch"])
        urls, member, group = self.shards_of(epoch, slot, total)
        block, start, emitted = int(pos["block"]), (int(pos["shard"]), int(pos["offset"])), int(pos["emitted"])
        raws = self._raw(urls, member, group, *start)
        while True:
            items = list(islice(raws, self.block_size))
            if not items:
                return
            order = (np.random.default_rng([self.seed, epoch, slot, block]).permutation(len(items))
                     if self.block_size > 1 else range(len(items)))
            after = (items[-1].shard, items[-1].index + 1)
            for k in range(emitted, len(items)):
                out = self._process(items[order[k]].data)
                if out is None:
                    continue
                if k + 1 < len(items):
                    position = {"epoch": epoch, "block": block, "shard": start[0], "offset": start[1], "emitted": k + 1}
                else:
                    position = {"epoch": epoch, "block": block + 1, "shard": after[0], "offset": after[1], "emitted": 0}
                yield StreamItem(out, position, epoch)
            block, start, emitted = block + 1, after, 0

    def stream(self, slot: int, total: int, start: Position | None = None) -> Iterator[StreamItem]:
        self._warn_few_shards(slot, total)
        pos = dict(start) if start else {"epoch": 0, "block": 0, "shard": 0, "offset": 0, "emitted": 0}
        try:
            while True:
                produced = False
                for item in self._epoch(slot, total, pos):
                    produced = True
                    yield item
                if not produced and pos["block"] == 0 and pos["emitted"] == 0:  # a whole epoch, not a tail
                    shards = ", ".join(self.shards_of(int(pos["epoch"]), slot, total)[0])
                    raise DataError(f"reader {slot} of {total} found no usable sample in a whole epoch", file=shards)
                pos = {"epoch": int(pos["epoch"]) + 1, "block": 0, "shard": 0, "offset": 0, "emitted": 0}
        except DataError as err:  # on_error: raise; in a worker, hand the one-line error to the main process
            if not in_worker():
                raise
            yield StreamItem(WorkerDataError(err), pos, int(pos["epoch"]))
