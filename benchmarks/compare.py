"""Compare lamm-eval runs: every shared metric of each run against the first, with paired tests.

A run is a lamm-eval output folder (or its results.json); its samples.jsonl sits next to it. Runs are
paired on the sample ids they share (in the first run's order):
- per metric: the values from results.json, their bootstrap SE, the difference to the first run, and
  a paired bootstrap of that difference over the shared samples (its SE and two-sided p-value; the
  metric is rebuilt from the first run's recipe and recomputed on both runs' records);
- per-sample correctness (each record's `correct` verdict): McNemar's test on the discordant pairs,
  exact (two-sided binomial, p = 0.5) and chi-square with continuity correction.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lamm.benchmarks.bootstrap import BootstrapSpec, paired_difference

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"


@dataclass
class Run:
    """One evaluation's results.json content and its per-sample records."""

    file: Path  # the results.json
    results: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def label(self) -> str:
        """<model>/<recipe>: the two folders lamm-eval names its output after."""
        folder = self.file.resolve().parent
        return f"{folder.parent.name}/{folder.name}"


@dataclass
class MetricRow:
    """One metric of one run next to the first run's value."""

    metric: str
    run: str
    value: float | None
    stderr: float | None
    baseline: float | None
    diff: float | None
    diff_stderr: float | None  # paired bootstrap over the shared samples
    p_value: float | None  # paired bootstrap, two-sided
    n_paired: int
    baseline_row: bool = False  # the first run's own row


@dataclass
class McNemarRow:
    """Per-sample correctness of one run against the first on their shared judged samples."""

    run: str
    n: int
    both_right: int
    only_baseline: int  # right in the first run only
    only_run: int  # right in this run only
    both_wrong: int
    p_exact: float
    p_chi2: float


def load_run(path: str | Path) -> Run:
    """A run from its output folder or results.json; a problem raises ValueError naming the file."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{file}: no such file (expected a lamm-eval output folder or its {RESULTS_FILE})")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise ValueError(f"{file}: no `metrics` mapping (not a lamm-eval {RESULTS_FILE})")
    samples = file.parent / SAMPLES_FILE
    if not samples.is_file():
        raise ValueError(f"{samples}: no such file (compare pairs the runs' per-sample records)")
    from lamm.benchmarks.evaluator import read_records

    return Run(file, results, read_records(samples))


def mcnemar(only_a: int, only_b: int) -> tuple[float, float]:
    """McNemar's two-sided p-values for discordant counts: exact (binomial with p = 1/2) and
    chi-square (1 degree of freedom) with continuity correction."""
    n = only_a + only_b
    if n == 0:
        return 1.0, 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    exact = min(1.0, 2.0 * tail / 2.0 ** n)
    chi2 = max(abs(only_a - only_b) - 1, 0) ** 2 / n
    return exact, math.erfc(math.sqrt(chi2 / 2.0))  # chi-square(1) survival function


def _metric_objects(run: Run) -> dict[str, Any]:
    """The first run's metrics by the names of the values they compute ({} when they cannot be rebuilt)."""
    from lamm.benchmarks.build import build_metrics

    config = (run.results.get("config") or {}).get("metrics")
    if config is None:
        return {}
    try:
        metrics = build_metrics(config)
    except (ValueError, KeyError, TypeError):  # a plug-in metric not installed here: no paired bootstrap
        return {}
    by_key = {}
    for metric in metrics:
        try:
            keys = metric.compute(run.records) if run.records else {}
        except (ValueError, KeyError, TypeError):
            continue
        by_key.update({k: metric for k in keys})
    return by_key


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compare_runs(runs: Sequence[Run], spec: BootstrapSpec = BootstrapSpec()
                 ) -> tuple[list[str], list[MetricRow], list[McNemarRow]]:
    """The shared metrics, a row per (metric, run) and a McNemar row per run after the first."""
    base = runs[0]
    shared = list(base.results["metrics"])
    for run in runs[1:]:
        mine = [k for k in shared if k in run.results["metrics"]]
        if not mine:
            theirs, ours = ", ".join(base.results["metrics"]) or "none", ", ".join(run.results["metrics"]) or "none"
            raise ValueError(f"{run.file}: no metric in common with {base.file} ({theirs} vs {ours})")
        shared = mine
    objects = _metric_objects(base)
    rows: list[MetricRow] = []
    tests: list[McNemarRow] = []
    by_id = {r["id"]: r for r in base.records}
    for key in shared:
        value = _number(base.results["metrics"][key])
        rows.append(MetricRow(key, f"1. {base.label}", value, _number((base.results.get("stderr") or {}).get(key)),
                              value, None, None, None, len(base.records), baseline_row=True))
    for number, run in enumerate(runs[1:], 2):
        label = f"{number}. {run.label}"
        other = {r["id"]: r for r in run.records}
        ids = [i for i in by_id if i in other]
        recs_a, recs_b = [by_id[i] for i in ids], [other[i] for i in ids]
        for key in shared:
            a, b = _number(base.results["metrics"][key]), _number(run.results["metrics"][key])
            se, p = (paired_difference(objects[key], key, recs_a, recs_b, spec)
                     if key in objects and ids else (None, None))
            rows.append(MetricRow(key, label, b, _number((run.results.get("stderr") or {}).get(key)), a,
                                  None if a is None or b is None else b - a, se, p, len(ids)))
        judged = [(ra["correct"], rb["correct"]) for ra, rb in zip(recs_a, recs_b)
                  if isinstance(ra.get("correct"), bool) and isinstance(rb.get("correct"), bool)]
        if judged:
            only_a = sum(1 for x, y in judged if x and not y)
            only_b = sum(1 for x, y in judged if y and not x)
            both = sum(1 for x, y in judged if x and y)
            tests.append(McNemarRow(label, len(judged), both, only_a, only_b, len(judged) - both - only_a - only_b,
                                    *mcnemar(only_a, only_b)))
    rows.sort(key=lambda r: shared.index(r.metric))  # stable: each metric's runs stay in order
    return shared, rows, tests


def _fmt(v: float | None, p: bool = False) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.4g}" if p else f"{v:.4f}"


def _signed(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:+.4f}"


def table_cells(rows: Sequence[MetricRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the metric table (markdown and the terminal table share them)."""
    head = ["metric", "run", "value", "SE", "diff vs first", "SE of diff (paired)", "p (paired bootstrap)", "paired n"]
    cells = [[r.metric, r.run, _fmt(r.value), _fmt(r.stderr), "(first)" if r.baseline_row else _signed(r.diff),
              _fmt(r.diff_stderr), _fmt(r.p_value, p=True), str(r.n_paired)] for r in rows]
    return head, cells


def mcnemar_cells(tests: Sequence[McNemarRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-sample correctness table."""
    head = ["run", "paired n", "both right", "first only", "this only", "both wrong", "McNemar p (exact)",
            "McNemar p (chi2, cc)"]
    return head, [[t.run, str(t.n), str(t.both_right), str(t.only_baseline), str(t.only_run), str(t.both_wrong),
                   _fmt(t.p_exact, p=True), _fmt(t.p_chi2, p=True)] for t in tests]


def markdown(runs: Sequence[Run], rows: Sequence[MetricRow], tests: Sequence[McNemarRow]) -> str:
    """The comparison as markdown: the runs, the metric table and the McNemar table."""
    lines = ["# Comparison", ""]
    lines += [f"{i + 1}. `{r.file}` ({r.results.get('recipe', '?')}, {r.results.get('model', '?')}, n={len(r.records)})"
              for i, r in enumerate(runs)]
    for title, (head, cells) in (("Metrics", table_cells(rows)), ("Per-sample correctness", mcnemar_cells(tests))):
        lines += ["", f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def comparison_chart(path: Path, shared: Sequence[str], runs: Sequence[Run]) -> None:
    """Grouped bars: one group per shared metric, one bar per run, +-1 bootstrap SE where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 * len(shared) * len(runs) / 2 + 2), 3.8), dpi=100)
    x = np.arange(len(shared))
    for i, run in enumerate(runs):
        values = [_number(run.results["metrics"].get(k)) for k in shared]
        errors = [_number((run.results.get("stderr") or {}).get(k)) for k in shared]
        heights = [v if v is not None and not math.isnan(v) else 0.0 for v in values]
        known = any(e is not None for e in errors)
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, heights, width,
               yerr=[math.nan if e is None else e for e in errors] if known else None,
               capsize=3, label=f"{i + 1}. {run.label}")
    ax.set_xticks(x, list(shared), rotation=45, fontsize=8)
    ax.set_ylabel("value")
    ax.set_title("lamm-eval compare", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
