"""Mix several datasets with weights in one run (e.g. Multimodal-GPT's joint language-only +
vision-language training).

    name: mixture
    mode: mixed            # mixed: every batch mixes sources; alternating: each batch from one source
    num_samples: null      # samples per epoch (mixed map-style mixtures); default: the sources' total
    datasets:
      - {name: mmgpt, path: dolly.jsonl, weight: 1}
      - {name: lamm, path: lamm_2d.json, weight: 2}

Sources inherit `max_length`, `truncation`, `on_error`, `seed` and `shuffle` unless they set their own.
A `mixed` mixture of map-style sources is map-style (`MixtureDataset`): each epoch draws a seeded plan,
index i -> (source, sample); small sources repeat (reshuffled) when oversampled. An `alternating`
mixture, or one with a streamed source (webdataset, jsonl_shards), is a resumable stream
(`lamm.datasets.streaming.mixture.StreamMixture`; map-style sources are read as streams), in which
each batch of `batch_size` samples comes from one source in `alternating` mode.
"""
from __future__ import annotations

import math

import numpy as np
from torch.utils.data import Dataset, IterableDataset

from lamm.datasets.config import BuildContext, DataConfig, data_mapping
from lamm.datasets.errors import SkipCounter
from lamm.datasets.processor import ProcessedSample
from lamm.datasets.streaming.base import ResumableStream
from lamm.datasets.streaming.map_stream import MapStream
from lamm.datasets.streaming.mixture import MODES, StreamMixture
from lamm.registry import DATASETS

INHERITED = ("max_length", "truncation", "on_error", "seed", "shuffle")


class MixtureDataset(Dataset):
    """A map-style mixture of map-style datasets following a per-epoch, seeded sampling plan."""

    def __init__(self, sources: list[Dataset], weights: list[float], counter: SkipCounter,
                 num_samples: int | None = None, seed: int = 0, name: str = "mixture") -> None:
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
        self.num_samples = num_samples or sum(len(s) for s in sources)
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
        choice = rng.choice(len(self.sources), size=n, p=self.weights / self.weights.sum())
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


@DATASETS.register("mixture")
def build_mixture(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """A weighted mixture of datasets given as a list of data configs (each with an optional `weight`)."""
    from lamm.datasets.build import build_from_config  # late: build imports the registry users

    specs = cfg.option("datasets")
    if not specs:
        raise ValueError("data config 'mixture' needs a non-empty 'datasets' list")
    if isinstance(specs, dict):  # a mapping name -> config reads well in YAML too
        specs = [{"name": k, **data_mapping(v)} if "name" not in v else data_mapping(v) for k, v in specs.items()]
    mode = cfg.option("mode", "mixed")
    if mode not in MODES:
        raise ValueError(f"unknown mixture mode {mode!r}; expected one of {', '.join(MODES)}")
    sources, weights = [], []
    for spec in specs:
        spec = data_mapping(spec)
        weights.append(float(spec.pop("weight", 1.0)))
        for key in INHERITED:
            spec.setdefault(key, getattr(cfg, key))
        sources.append(build_from_config(DataConfig.from_any(spec), ctx))
    num_samples = cfg.option("num_samples")
    if mode == "mixed" and not any(isinstance(s, IterableDataset) for s in sources):
        return MixtureDataset(sources, weights, ctx.counter, num_samples=num_samples, seed=cfg.seed, name=cfg.name)
    if num_samples is not None:
        raise ValueError("data.num_samples applies to mixed map-style mixtures; a streamed mixture runs until "
                         "trainer.max_steps")
    shuffle = bool(cfg.shuffle and ctx.split == "train")
    streams = [s if isinstance(s, ResumableStream) else _as_stream(s, shuffle, cfg.seed, k) for k, s in enumerate(sources)]
    return StreamMixture(streams, weights, ctx.counter, mode=mode, batch_size=cfg.batch_size, seed=cfg.seed,
                         name=cfg.name)


def _as_stream(source: Dataset, shuffle: bool, seed: int, k: int) -> ResumableStream:
    if isinstance(source, IterableDataset):
        raise ValueError(f"mixture source {k} ({getattr(source, 'name', type(source).__name__)}) streams but "
                         "cannot resume; lamm-train needs resumable streams")
    # Per-source seeds: equal-length sources do not share one permutation.
    return MapStream(source, shuffle=shuffle, seed=seed * 1_000_003 + k)
