"""A suite: several benchmark recipes run with one command, summarised in one table (rows benchmarks,
columns shot counts, like the OpenFlamingo paper's) as suite.md and suite.json.

    suite:
      members: [fewshot_coco, fewshot_vqav2, mme]   # which of `recipes` to run, in this order
      shots: [0, 4]        # replaces every few-shot member's shots (null: each recipe's own)
      seeds: null          # likewise for seeds
      format: null         # likewise: openflamingo | idefics | chat
      retrieval: null      # likewise: random | rices
      limit: null          # every member's scenario.limit (null: each recipe's own)
      headline: {mme: mme_total}   # the metric a member's row shows (default: its first metric)
    recipes: {fewshot_coco: {...}, ...}             # the member recipes (the suite's Hydra defaults)

A few-shot member runs through lamm.benchmarks.fewshot_runs; any other recipe is one zero-shot
evaluation and fills the table's 0-shot column. Each member keeps its own folder and outputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamm.benchmarks.evaluator import Evaluator, EvalSpec, dist_info
from lamm.benchmarks.fewshot_runs import fewshot_recipes, fmt_mean_std, run_fewshot
from lamm.plain_config import to_plain

SUITE_KEYS = {"members", "shots", "seeds", "limit", "format", "retrieval", "headline"}


def suite_members(bench: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, recipe) per member, with the suite's shots/seeds/limit applied; errors name the key."""
    b = to_plain(bench)
    s = b.get("suite") or {}
    unknown = sorted(set(s) - SUITE_KEYS)
    if unknown:
        raise ValueError(f"benchmark.suite: unknown keys {unknown}; allowed: {', '.join(sorted(SUITE_KEYS))}")
    recipes = b.get("recipes") or {}
    names = s.get("members") or list(recipes)
    missing = [m for m in names if m not in recipes]
    if missing:
        raise ValueError(f"benchmark.suite.members: {missing} not among the suite's recipes ({', '.join(recipes)})")
    out = []
    for name in names:
        r = dict(recipes[name])
        if "fewshot" in r:
            fs = dict(r["fewshot"])
            for key in ("shots", "seeds", "format", "retrieval"):
                if s.get(key) is not None:
                    fs[key] = s[key]
            if s.get("limit") is not None:
                fs["scenario"] = {**fs["scenario"], "limit": int(s["limit"])}
            r["fewshot"] = fs
        elif s.get("limit") is not None:
            r["scenario"] = {**r["scenario"], "limit": int(s["limit"])}
        out.append((name, r))
    return out


def suite_specs(bench: Any) -> list[EvalSpec]:
    """Every evaluation the suite will run (to check names before the model loads)."""
    specs = []
    for name, r in suite_members(bench):
        if "fewshot" in r:
            specs += [spec for _, _, spec in fewshot_recipes(r.get("name", name), r["fewshot"],
                                                              f"benchmark.recipes.{name}.fewshot")]
        else:
            specs.append(EvalSpec.from_config(r))
    return specs


def _row(name: str, result: dict[str, Any], headline: str | None) -> dict[str, Any]:
    if result.get("kind") == "fewshot":
        per_shot = result["results"]
        metrics = list(next(iter(per_shot.values()))["metrics"])
        metric = headline or metrics[0]
        cells = {k: v["metrics"].get(metric) for k, v in per_shot.items()}
        n = next(iter(per_shot.values()))["n"]
    else:
        metric = headline or next(iter(result["metrics"]))
        value = result["metrics"].get(metric)
        cells = {"0": {"mean": value, "std": 0.0 if value is not None else None, "values": [value]}}
        n = result["n"]
    if all(c is None for c in cells.values()):
        raise ValueError(f"benchmark.suite.headline: {name} has no metric {metric!r}")
    return {"benchmark": name, "metric": metric, "n": n, "shots": cells}


def write_table(out_dir: Path, rows: list[dict[str, Any]], model_name: str) -> None:
    """suite.json and suite.md: one row per benchmark, one column per shot count."""
    shots = sorted({int(k) for r in rows for k in r["shots"]})
    (out_dir / "suite.json").write_text(json.dumps({"model": model_name, "shots": shots, "rows": rows}, indent=1) + "\n",
                                        encoding="utf-8")
    lines = [f"# Few-shot suite -- {model_name}", "",
             "| benchmark | metric | n | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|---|---|" + "---|" * len(shots)]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['n']} | "
                     + " | ".join(fmt_mean_std(r["shots"].get(str(k))) for k in shots) + " |")
    lines += ["", "mean ± std over seeds; `-`: not run at that shot count. Details: <benchmark>/results.json "
              "(few-shot: <benchmark>/fewshot.md)."]
    (out_dir / "suite.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_suite(model: Any, bench: Any, out_dir: str | Path, model_name: str = "model", **kwargs: Any) -> dict[str, Any]:
    """Run every member into `out_dir/<member>/` and write the summary table."""
    out_dir = Path(out_dir)
    headline = (to_plain(bench).get("suite") or {}).get("headline") or {}
    rows = []
    for name, r in suite_members(bench):
        if "fewshot" in r:
            result = run_fewshot(model, r.get("name", name), r["fewshot"], out_dir / name, model_name=model_name, **kwargs)
        else:
            result = Evaluator(model, EvalSpec.from_config(r), out_dir / name, model_name=model_name, **kwargs).run()
        rows.append(_row(name, result, headline.get(name)))
    if dist_info()[0] == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_table(out_dir, rows, model_name)
    return {"model": model_name, "rows": rows}
