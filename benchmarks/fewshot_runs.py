"""A few-shot benchmark recipe: one scenario evaluated at several shot counts and seeds, each an ordinary
(resumable) evaluation in `<out>/<k>shot/seed<s>/`, then one results.json with mean and standard
deviation over the seeds per shot count and metric, and fewshot.md.

    fewshot:
      scenario: {name: vqav2, data_root: ..., split: val, limit: 1000}
      prompt: vqa                  # caption | vqa | classification | hateful_memes
      format: openflamingo         # openflamingo | idefics | chat
      shots: [0, 4, 8, 16, 32]
      seeds: [0, 1, 2]
      retrieval: random            # random | rices
      rices: {encoder: model, cache_dir: ...}
      inferencer: {name: direct, max_new_tokens: 5}
      metrics: [vqa_accuracy]

The standard deviation is the population one over seeds (numpy's default, as OpenFlamingo reports
it). Runs whose demonstrations cannot depend on the seed -- RICES, and zero-shot in the chat format --
are evaluated once, with the first seed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lamm.benchmarks.evaluator import Evaluator, EvalSpec, dist_info
from lamm.plain_config import to_plain

FEWSHOT_KEYS = {"scenario", "prompt", "format", "shots", "seeds", "retrieval", "rices", "zero_shot_demos",
                "inferencer", "metrics", "batch_size"}
INSTRUCTION_KEYS = ("prompt", "format", "retrieval", "rices", "zero_shot_demos")
SUMMARY_FILE = "results.json"


def _check(c: Any, key: str) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise ValueError(f"{key}: expected a mapping, found {type(c).__name__}")
    unknown = sorted(set(c) - FEWSHOT_KEYS)
    if unknown:
        raise ValueError(f"{key}: unknown keys {unknown}; allowed: {', '.join(sorted(FEWSHOT_KEYS))}")
    for need in ("scenario", "metrics"):
        if need not in c:
            raise ValueError(f"{key}.{need}: missing")
    shots = c.get("shots", [0, 4, 8, 16, 32])
    if not isinstance(shots, list) or not shots or not all(isinstance(k, int) and k >= 0 for k in shots):
        raise ValueError(f"{key}.shots: expected a list of shot counts >= 0, found {shots!r}")
    seeds = c.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{key}.seeds: expected a non-empty list of integers, found {seeds!r}")
    return {**c, "shots": shots, "seeds": seeds}


def seeds_for(c: dict[str, Any], shots: int) -> list[int]:
    """The seeds a shot count is run with: all of them unless its demonstrations ignore the seed."""
    fixed = c.get("retrieval", "random") == "rices" or (shots == 0 and c.get("format", "openflamingo") == "chat")
    return c["seeds"][:1] if fixed else list(c["seeds"])


def fewshot_recipes(name: str, cfg: Any, key: str = "benchmark.fewshot") -> list[tuple[int, int, EvalSpec]]:
    """(shots, seed, recipe) for every evaluation a few-shot config asks for."""
    c = _check(to_plain(cfg), key)
    out = []
    for k in c["shots"]:
        for seed in seeds_for(c, k):
            instruction = {"name": "fewshot", "shots": k, "seed": seed,
                           **{x: c[x] for x in INSTRUCTION_KEYS if c.get(x) is not None}}
            out.append((k, seed, EvalSpec(f"{name}_{k}shot_seed{seed}", dict(c["scenario"]), instruction,
                                          c.get("inferencer") or {"name": "direct"}, c["metrics"],
                                          batch_size=c.get("batch_size"))))
    return out


def aggregate(runs: dict[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    """Per shot count: n, seeds, and per metric the mean, std (over seeds) and the values."""
    out: dict[str, Any] = {}
    for k in sorted({k for k, _ in runs}):
        seeds = sorted(s for kk, s in runs if kk == k)
        names = list(runs[(k, seeds[0])]["metrics"])
        metrics = {}
        for m in names:
            values = [runs[(k, s)]["metrics"].get(m) for s in seeds]
            finite = [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(float(v))]
            metrics[m] = {"mean": float(np.mean(finite)) if finite else None,
                          "std": float(np.std(finite)) if finite else None, "values": values}
        out[str(k)] = {"n": runs[(k, seeds[0])]["n"], "seeds": seeds, "metrics": metrics}
    return out


def fmt_mean_std(cell: dict[str, Any] | None) -> str:
    """`mean ± std` (4 decimals), `mean` alone for a single run, `-` when missing."""
    if not cell or cell.get("mean") is None:
        return "-"
    if len(cell.get("values", [])) > 1:
        return f"{cell['mean']:.4f} ± {cell['std']:.4f}"
    return f"{cell['mean']:.4f}"


def _write(out_dir: Path, summary: dict[str, Any]) -> None:
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    shots = list(summary["results"])
    metrics = list(next(iter(summary["results"].values()))["metrics"]) if shots else []
    lines = [f"# {summary['recipe']} -- {summary['model']}", "",
             f"{summary['format']} prompts, {summary['retrieval']} demonstrations, seeds {summary['seeds']}.", "",
             "| metric | " + " | ".join(f"{k} shots" for k in shots) + " |", "|---" * (len(shots) + 1) + "|"]
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(fmt_mean_std(summary["results"][k]["metrics"].get(m)) for k in shots) + " |")
    lines += ["", "mean ± std over seeds (population std, as OpenFlamingo reports). Per run: <k>shot/seed<s>/report.md."]
    (out_dir / "fewshot.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_fewshot(model: Any, name: str, cfg: Any, out_dir: str | Path, model_name: str = "model",
                **kwargs: Any) -> dict[str, Any]:
    """Run every (shots, seed) evaluation of a few-shot config into `out_dir` and write the summary."""
    out_dir = Path(out_dir)
    c = _check(to_plain(cfg), "benchmark.fewshot")
    runs = {}
    for k, seed, recipe in fewshot_recipes(name, c):
        runs[(k, seed)] = Evaluator(model, recipe, out_dir / f"{k}shot" / f"seed{seed}", model_name=model_name,
                                    **kwargs).run()
    summary = {"recipe": name, "model": model_name, "kind": "fewshot", "format": c.get("format", "openflamingo"),
               "prompt": c.get("prompt", "vqa"), "retrieval": c.get("retrieval", "random"), "shots": c["shots"],
               "seeds": c["seeds"], "scenario": c["scenario"], "results": aggregate(runs)}
    if dist_info()[0] == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write(out_dir, summary)
    return summary
