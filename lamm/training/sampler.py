"""A resumable sample stream: seeded per-pass shuffles, sharded across ranks, restartable at any batch."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

GROUP_WINDOW = 50  # global batches whose samples are sorted by length together (data.group_by_length)


class ResumableStreamSampler(Sampler[int]):
    """Yields `total` indices per rank: pass p over the data is a permutation seeded by (seed, p).

    Training is one long stream (Lightning sees one epoch bounded by max_steps), so the position
    is a single number, `consumed` global samples, and a resumed run continues from exactly the
    next sample. Each global batch of `batch_size * world_size` is split across ranks by stride.
    """

    def __init__(self, dataset_len: int, total_per_rank: int, seed: int = 0, shuffle: bool = True,
                 world_size: int = 1, rank: int = 0, batch_size: int = 1, lengths: list[int] | None = None) -> None:
        if dataset_len <= 0:
            raise ValueError("the training dataset is empty")
        # data.group_by_length: each pass's order sorted by length within windows of GROUP_WINDOW global
        # batches, so a batch holds similar lengths (little padding); still a function of (seed, pass).
        self.lengths = lengths
        self.dataset_len = dataset_len
        self.total_per_rank = total_per_rank
        self.seed, self.shuffle = seed, shuffle
        self.world_size, self.rank, self.batch_size = world_size, rank, batch_size
        self.start_global = 0  # global samples already consumed (set on resume)

    def _global_order(self, start: int) -> Iterator[int]:
        index = start
        while True:
            p, offset = divmod(index, self.dataset_len)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
                perm = torch.randperm(self.dataset_len, generator=g).tolist()
            else:
                perm = list(range(self.dataset_len))
            if self.lengths is not None:
                window = GROUP_WINDOW * self.batch_size * self.world_size
                perm = [i for w in range(0, len(perm), window)
                        for i in sorted(perm[w:w + window], key=lambda i: -self.lengths[i])]
            for i in perm[offset:]:
                yield i
                index += 1

    def __iter__(self) -> Iterator[int]:
        step = self.batch_size * self.world_size
        start = self.start_global
        remaining = self.total_per_rank - start // self.world_size
        order = self._global_order(start)
        produced = 0
        while produced < remaining:
            block = [next(order) for _ in range(step)]
            for i in block[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]:
                if produced >= remaining:
                    return
                yield i
                produced += 1

    def __len__(self) -> int:
        # The full length, not what is left: Lightning keeps its restored batch counter and
        # compares it with len(dataloader); the stream itself stops at the right sample.
        return self.total_per_rank
