"""Mix several datasets with weights in one run (e.g. Multimodal-GPT's joint language-only +
vision-language training).

    name: mixture
    mode: mixed            # mixed: every batch mixes sources; alternating: each batch from one source
    num_samples: null      # samples per epoch; default: the sum of the sources' lengths
    datasets:
      - {name: mmgpt, path: dolly.jsonl, weight: 1}
      - {name: lamm, path: lamm_2d.json, weight: 2}

Sources inherit `max_length`, `truncation` and `on_error` unless they set their own. Each epoch
draws a seeded plan: index i -> (source, sample); small sources repeat (reshuffled) when oversampled.
In `alternating` mode consecutive blocks of `batch_size` indices come from one source, chosen by
smooth weighted round-robin; use `batch_sampler()` (which keeps blocks together under shuffling and
DDP) so a batch never straddles two sources.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from torch.utils.data import Dataset, IterableDataset, Sampler

from lamm.datasets.config import BuildContext, DataConfig, data_mapping
from lamm.datasets.errors import SkipCounter
from lamm.datasets.processor import ProcessedSample
from lamm.registry import DATASETS

MODES = ("mixed", "alternating")
INHERITED = ("max_length", "truncation", "on_error", "seed")


def _weighted_round_robin(weights: np.ndarray, n: int) -> np.ndarray:
    """Deterministic sequence of n picks whose counts follow the weights as closely as possible."""
    current = np.zeros(len(weights))
    total = weights.sum()
    picks = np.empty(n, dtype=np.int64)
    for i in range(n):
        current += weights
        k = int(np.argmax(current))
        current[k] -= total
        picks[i] = k
    return picks


class MixtureDataset(Dataset):
    """A map-style mixture of map-style datasets following a per-epoch, seeded sampling plan."""

    def __init__(self, sources: list[Dataset], weights: list[float], counter: SkipCounter, mode: str = "mixed",
                 num_samples: int | None = None, block_size: int = 8, seed: int = 0, name: str = "mixture") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mixture mode {mode!r}; expected one of {', '.join(MODES)}")
        if not sources or len(sources) != len(weights):
            raise ValueError("mixture needs one weight per source dataset and at least one source")
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum, found {weights}")
        empty = [getattr(s, "name", str(i)) for i, s in enumerate(sources) if len(s) == 0 and weights[i] > 0]
        if empty:
            raise ValueError(f"mixture sources with weight > 0 are empty: {empty}")
        self.sources = sources
        self.weights = np.asarray(weights, dtype=np.float64)
        self.counter = counter
        self.mode = mode
        self.num_samples = num_samples or sum(len(s) for s in sources)
        self.block_size = block_size
        self.seed = seed
        self.name = name
        self.set_epoch(0)

    @property
    def skipped(self) -> SkipCounter:
        return self.counter

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's plan (index -> source, sample)."""
        rng = np.random.default_rng([self.seed, epoch])
        n = self.num_samples
        if self.mode == "mixed":
            choice = rng.choice(len(self.sources), size=n, p=self.weights / self.weights.sum())
        else:
            blocks = _weighted_round_robin(self.weights, math.ceil(n / self.block_size))
            choice = np.repeat(blocks, self.block_size)[:n]
        plan = np.empty((n, 2), dtype=np.int64)
        plan[:, 0] = choice
        for k, source in enumerate(self.sources):
            where = np.flatnonzero(choice == k)
            reps = math.ceil(len(where) / len(source)) if len(where) else 0
            order = np.concatenate([rng.permutation(len(source)) for _ in range(reps)]) if reps else np.empty(0, np.int64)
            plan[where, 1] = order[: len(where)]
        self.plan = plan

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> ProcessedSample | None:
        source, item = self.plan[index]
        return self.sources[int(source)][int(item)]

    def source_of(self, index: int) -> int:
        """Which source index `index` reads from (this epoch)."""
        return int(self.plan[index, 0])

    def batch_sampler(self, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> "BlockBatchSampler":
        """Batches of `block_size` indices from one source each (alternating mode)."""
        return BlockBatchSampler(self, shuffle=shuffle, num_replicas=num_replicas, rank=rank)


class BlockBatchSampler(Sampler[list[int]]):
    """Yields the mixture's index blocks as batches: shuffled by block, split across ranks by block."""

    def __init__(self, dataset: MixtureDataset, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def _blocks(self) -> list[list[int]]:
        n, b = len(self.dataset), self.dataset.block_size
        blocks = [list(range(i, min(i + b, n))) for i in range(0, n, b)]
        if self.shuffle:
            order = np.random.default_rng([self.dataset.seed, self.epoch, 1]).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        return blocks[self.rank:: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._blocks())

    def __len__(self) -> int:
        return len(self._blocks())


@DATASETS.register("mixture")
def build_mixture(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """A weighted mixture of datasets given as a list of data configs (each with an optional `weight`)."""
    from lamm.datasets.build import build_from_config  # late: build imports the registry users

    specs = cfg.option("datasets")
    if not specs:
        raise ValueError("data config 'mixture' needs a non-empty 'datasets' list")
    if isinstance(specs, dict):  # a mapping name -> config reads well in YAML too
        specs = [{"name": k, **data_mapping(v)} if "name" not in v else data_mapping(v) for k, v in specs.items()]
    sources, weights = [], []
    for spec in specs:
        spec = data_mapping(spec)
        weights.append(float(spec.pop("weight", 1.0)))
        for key in INHERITED:
            spec.setdefault(key, getattr(cfg, key))
        child = build_from_config(DataConfig.from_any(spec), ctx)
        if isinstance(child, IterableDataset):
            raise ValueError(f"mixture sources must be map-style datasets; {spec.get('name')!r} streams")
        sources.append(child)
    return MixtureDataset(
        sources, weights, ctx.counter,
        mode=cfg.option("mode", "mixed"),
        num_samples=cfg.option("num_samples"),
        block_size=cfg.batch_size,
        seed=cfg.seed,
        name=cfg.name,
    )
