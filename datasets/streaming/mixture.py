"""A weighted mixture of resumable streams, itself a resumable stream.

Each reader interleaves its own share of every source. `mixed`: the source of each sample is drawn
with the weights from a generator seeded by (seed, reader, block of picks); `alternating`: each run
of `batch_size` consecutive samples (one batch of the reader) comes from one source, the sources
following a smooth weighted round-robin. The position is the pick count, the round-robin's state and
every source's own position, so a resumed reader makes the same choices and reads the same samples.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from lamm.datasets.errors import SkipCounter, WorkerDataError
from lamm.datasets.streaming.base import Position, ResumableStream, StreamItem

MODES = ("mixed", "alternating")
DRAWS = 4096  # mixed-mode choices drawn per generator (a pure function of seed, reader and block)


class StreamMixture(ResumableStream):
    """Samples from `sources` in proportion to `weights` (see the module docstring for the modes)."""

    def __init__(self, sources: list[ResumableStream], weights: list[float], counter: SkipCounter,
                 mode: str = "mixed", batch_size: int = 1, seed: int = 0, name: str = "mixture") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mixture mode {mode!r}; expected one of {', '.join(MODES)}")
        if not sources or len(sources) != len(weights):
            raise ValueError("mixture needs one weight per source dataset and at least one source")
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum, found {weights}")
        self.sources = sources
        self.weights = np.asarray(weights, dtype=np.float64)
        self.counter = counter
        self.mode = mode
        self.batch_size = max(1, int(batch_size))
        self.seed = seed
        self.name = name

    @property
    def skipped(self) -> SkipCounter:
        return self.counter

    def _mixed_choice(self, slot: int, pick: int, cache: dict[int, np.ndarray]) -> int:
        block = pick // DRAWS
        if block not in cache:
            cache.clear()
            rng = np.random.default_rng([self.seed, slot, block])
            cache[block] = rng.choice(len(self.sources), size=DRAWS, p=self.weights / self.weights.sum())
        return int(cache[block][pick % DRAWS])

    def _round_robin(self, current: np.ndarray) -> int:
        """The next block's source by smooth weighted round-robin (updates `current` in place)."""
        current += self.weights
        k = int(np.argmax(current))
        current[k] -= self.weights.sum()
        return k

    def stream(self, slot: int, total: int, start: Position | None = None) -> Iterator[StreamItem]:
        start = start or {}
        pick = int(start.get("pick", 0))
        current = np.asarray(start.get("wrr", [0.0] * len(self.sources)), dtype=np.float64)
        source = int(start.get("source", 0))
        positions = list(start.get("sources", [None] * len(self.sources)))
        iterators = [None] * len(self.sources)
        cache: dict[int, np.ndarray] = {}
        while True:
            if self.mode == "alternating":
                if pick % self.batch_size == 0:
                    source = self._round_robin(current)
            else:
                source = self._mixed_choice(slot, pick, cache)
            if iterators[source] is None:
                iterators[source] = self.sources[source].stream(slot, total, positions[source])
            item = next(iterators[source])
            positions[source] = item.position
            pick += 1
            position = {"pick": pick, "wrr": [float(c) for c in current], "source": source, "sources": list(positions)}
            yield StreamItem(item.sample, position, item.epoch)
            if isinstance(item.sample, WorkerDataError):
                return
