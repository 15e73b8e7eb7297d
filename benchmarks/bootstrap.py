"""Standard errors of metrics by bootstrap over samples (seedable), and paired differences of two runs.

Replicate b resamples the n records with replacement; every metric and every run sees the same
replicates for a given (n, seed), so the numbers are reproducible and paired differences line up.

Speed: a metric that is a mean of per-record values (`Metric.sample_scores`: accuracy, VQA accuracy,
MAE, ...) is bootstrapped vectorised -- each replicate is a mean of a gathered row, in chunks, so
1000 replicates of 100k records take well under a second. A metric without that decomposition
(CIDEr, BLEU, F1, ECE, mAP) is recomputed over the resampled records (`Metric.resampled`: captions are
tokenised once, not per replicate) for only the first `max_recompute` replicates; results.json says
how many (`bootstrap.recomputed`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

CHUNK_CELLS = 4_000_000  # indices per chunk of replicates (32 MB of int64)


@dataclass(frozen=True)
class BootstrapSpec:
    """How many replicates, from which seed; `samples: 0` turns error bars off."""

    samples: int = 1000
    seed: int = 0
    max_recompute: int = 200

    @classmethod
    def from_config(cls, node: Any, where: str = "bootstrap") -> "BootstrapSpec":
        """From a mapping such as {samples: 1000, seed: 0}; unknown keys and bad values name the key."""
        from lamm.plain_config import to_plain

        plain = to_plain(node)
        if plain is None:
            return cls()
        if not isinstance(plain, Mapping):
            raise ValueError(f"{where}: expected a mapping such as {{samples: 1000, seed: 0}}, found {plain!r}")
        known = set(asdict(cls()))
        for key, value in plain.items():
            if key not in known:
                raise ValueError(f"{where}.{key}: unknown key (keys: {', '.join(sorted(known))})")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}.{key}: expected a whole number >= 0, found {value!r}")
        return cls(**plain)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def replicate_chunks(n: int, spec: BootstrapSpec, limit: int | None = None) -> Iterator[np.ndarray]:
    """Index arrays [b, n] (b replicates each) for replicates 0 .. min(samples, limit) - 1, in order.

    The stream depends on (n, seed) only, so a prefix of it (`limit`) is the same replicates."""
    total = spec.samples if limit is None else min(spec.samples, limit)
    rng = np.random.default_rng(spec.seed)
    per_chunk = max(1, CHUNK_CELLS // max(n, 1))
    done = 0
    while done < total:
        b = min(per_chunk, total - done)
        # Drawn in chunks of per_chunk rows whatever the limit, so a shorter run is a true prefix.
        rows = rng.integers(0, n, size=(min(per_chunk, spec.samples - done), n))
        yield rows[:b]
        done += b


def replicate_values(metric: Any, records: Sequence[dict[str, Any]], keys: Sequence[str],
                     spec: BootstrapSpec) -> tuple[dict[str, np.ndarray], set[str]]:
    """Per key of `metric`, its value on each bootstrap replicate of `records` (NaN where undefined),
    and the keys that were recomputed (capped at `max_recompute` replicates) rather than vectorised."""
    n = len(records)
    if n == 0 or spec.samples == 0:
        return {}, set()
    out: dict[str, np.ndarray] = {}
    per_record = {k: np.asarray(v, dtype=np.float64) for k, v in metric.sample_scores(records).items() if k in keys}
    if per_record:
        stacked = np.stack(list(per_record.values()))  # [K, n]
        parts = [stacked[:, idx].mean(-1) for idx in replicate_chunks(n, spec)]  # each [K, b]
        values = np.concatenate(parts, 1)
        out.update({k: values[i] for i, k in enumerate(per_record)})
    rest = [k for k in keys if k not in per_record]
    if rest:
        compute = metric.resampled(records)
        rows: list[dict[str, float]] = []
        for chunk in replicate_chunks(n, spec, spec.max_recompute):
            rows.extend(_defined(compute, idx) for idx in chunk)
        out.update({k: np.array([r.get(k, math.nan) for r in rows], dtype=np.float64) for k in rest})
    return out, set(rest)


def _defined(compute: Any, idx: np.ndarray) -> dict[str, float]:
    """One replicate's values; {} (NaN for every key) when the metric is undefined on it (e.g. RRM on a
    resample without clean samples)."""
    try:
        return compute(idx)
    except (ValueError, ArithmeticError, KeyError, IndexError):
        return {}


def standard_error(values: np.ndarray) -> float | None:
    """Standard deviation (ddof 1) of the finite replicate values; None with fewer than two."""
    finite = values[np.isfinite(values)]
    return float(finite.std(ddof=1)) if len(finite) >= 2 else None


def standard_errors(computed: Sequence[tuple[Any, Mapping[str, float]]], records: Sequence[dict[str, Any]],
                    spec: BootstrapSpec) -> tuple[dict[str, float | None], dict[str, int]]:
    """Bootstrap SE of every value of every (metric, its compute() output) pair, and for the keys that
    were recomputed rather than vectorised, how many replicates they used."""
    errors: dict[str, float | None] = {}
    recomputed: dict[str, int] = {}
    for metric, named in computed:
        reps, slow = replicate_values(metric, records, list(named), spec)
        for key, rep in reps.items():
            errors[key] = standard_error(rep)
            if key in slow:
                recomputed[key] = len(rep)
    return errors, recomputed


def paired_difference(metric: Any, key: str, records_a: Sequence[dict[str, Any]], records_b: Sequence[dict[str, Any]],
                      spec: BootstrapSpec) -> tuple[float | None, float | None]:
    """Paired bootstrap of value(B) - value(A) over the same samples (records aligned by position):
    its standard error and a two-sided p-value (twice the smaller share of replicates on either side
    of zero, at most 1). (None, None) when undefined."""
    a = replicate_values(metric, records_a, [key], spec)[0].get(key)
    b = replicate_values(metric, records_b, [key], spec)[0].get(key)
    if a is None or b is None:
        return None, None
    diff = b - a
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        return None, None
    p = min(1.0, 2.0 * min(float((diff <= 0).mean()), float((diff >= 0).mean())))
    return float(diff.std(ddof=1)), p
