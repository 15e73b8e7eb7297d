"""ChEF's desiderata from one recipe: calibration, in-context learning, instruction following,
robustness and hallucination, each run as ordinary recipes (so each is resumable and has its own
samples.jsonl), then summarised in one table (desiderata.md / desiderata.json) and one PNG.

    calibration            ppl on the scenario: accuracy and ECE (10 equal-count bins)
    icl                    zero-shot vs `icl` instruction (accuracy, and the difference)
    instruction_following  option_map natural / neutral / unnatural: match ratio per map
    robustness             `corrupted` scenario (image / text / both): RRM per corruption
    hallucination          synth_pope (or any yes/no scenario) per negative kind: F1, accuracy, yes-ratio
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from lamm.plain_config import to_plain
from lamm.benchmarks.evaluator import Evaluator, EvalSpec, dist_info

DIMENSIONS = ("calibration", "icl", "instruction_following", "robustness", "hallucination")
DESIDERATA_KEYS = {"scenario", "dimensions", "inferencer", "option_style", "icl", "instruction_following",
                   "robustness", "hallucination"}


def desiderata_recipes(cfg: Any) -> list[tuple[str, str, EvalSpec]]:
    """(dimension, variant, recipe) for every evaluation the desiderata config asks for."""
    c = to_plain(cfg)
    unknown = set(c) - DESIDERATA_KEYS
    if unknown:
        raise ValueError(f"benchmark.desiderata: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(DESIDERATA_KEYS))}")
    if "scenario" not in c:
        raise ValueError("benchmark.desiderata.scenario: missing (a closed-answer scenario, e.g. {name: synth_shapes})")
    dims = c.get("dimensions") or list(DIMENSIONS)
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad:
        raise ValueError(f"benchmark.desiderata.dimensions: unknown {bad}; known: {', '.join(DIMENSIONS)}")
    scen = c["scenario"]
    ppl = c.get("inferencer") or {"name": "ppl"}
    style = {"option_style": c["option_style"]} if c.get("option_style") else {}
    standard = {"name": "standard", **style}
    out: list[tuple[str, str, EvalSpec]] = []

    def add(dim: str, variant: str, scenario: dict, instruction: dict, metrics: list, inferencer: dict = ppl) -> None:
        out.append((dim, variant, EvalSpec(f"{dim}_{variant}", copy.deepcopy(scenario), instruction, inferencer, metrics)))

    for dim in dims:
        opts = c.get(dim) or {}
        if dim == "calibration":
            add(dim, "ppl", scen, standard, ["accuracy", "ece"])
        elif dim == "icl":
            add(dim, "zero_shot", scen, standard, ["accuracy"])
            add(dim, "icl", scen, {"name": "icl", **style, **opts}, ["accuracy"])
        elif dim == "instruction_following":
            for m in opts.get("maps", ["natural", "neutral", "unnatural"]):
                add(dim, m, scen, {"name": "option_map", "map": m}, ["match_ratio"],
                    opts.get("inferencer") or ppl)
        elif dim == "robustness":
            wrapped = {"name": "corrupted", "scenario": scen,
                       "corruptions": opts.get("corruptions", ["image", "text", "both"]),
                       "severity": opts.get("severity", 1.0)}
            add(dim, "corrupted", wrapped, standard, ["rrm"])
        else:
            base = opts.get("scenario") or {"name": "synth_pope", **{k: v for k, v in scen.items()
                                                                     if k in ("root", "split", "limit", "generate", "seed", "sizes")}}
            for neg in opts.get("negatives", ["random", "popular", "adversarial"]):
                add(dim, neg, {**base, "negatives": neg}, standard, ["pope"])
    return out


HEADLINE = {
    "calibration": ("accuracy", "ece"),
    "icl": ("accuracy",),
    "instruction_following": ("match_ratio",),
    "robustness": ("rrm_image", "rrm_text", "rrm_both", "accuracy_clean"),
    "hallucination": ("f1", "pope_accuracy", "yes_ratio"),
}


def summary_rows(results: dict[tuple[str, str], dict]) -> list[dict[str, Any]]:
    """One row per (dimension, variant, metric) with the headline metrics of each dimension."""
    rows = []
    for (dim, variant), res in results.items():
        for key in HEADLINE[dim]:
            if key in res["metrics"]:
                rows.append({"dimension": dim, "variant": variant, "metric": key, "value": res["metrics"][key]})
    icl = {v: r["metrics"]["accuracy"] for (d, v), r in results.items() if d == "icl"}
    if {"zero_shot", "icl"} <= set(icl):
        rows.append({"dimension": "icl", "variant": "icl - zero_shot", "metric": "accuracy_gain",
                     "value": round(icl["icl"] - icl["zero_shot"], 6)})
    return rows


def _fmt(v: Any) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"


def _write_summary(out_dir: Path, rows: list[dict[str, Any]], model_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "desiderata.json").write_text(json.dumps({"model": model_name, "rows": rows}, indent=1) + "\n")
    lines = [f"# Desiderata -- {model_name}", "", "| dimension | variant | metric | value |", "|---|---|---|---|"]
    lines += [f"| {r['dimension']} | {r['variant']} | {r['metric']} | {_fmt(r['value'])} |" for r in rows]
    lines += ["", "Per-evaluation details: <dimension>_<variant>/report.md. ECE: lower is better; RRM: 100 = "
              "as good as clean, 0 = chance; yes-ratio near 0.5 on balanced probes is unbiased."]
    (out_dir / "desiderata.md").write_text("\n".join(lines) + "\n")
    fig = summary_figure(rows)
    fig.savefig(out_dir / "desiderata.png", metadata={"Software": None})
    plt.close(fig)


# Metric families: each gets its own panel and y scale, so RRM (0-100) never dwarfs a rate (0-1).
FAMILIES = {
    "rate": ("rate (0-1)", (0.0, 1.0)),
    "gain": ("accuracy gain (-1 to 1)", (-1.0, 1.0)),
    "rrm": ("RRM (100 = clean, 0 = chance)", (0.0, 100.0)),
}


def metric_family(metric: str) -> str:
    """The family (scale) of a headline metric: RRM, the ICL gain, or a rate in [0, 1]."""
    if metric.startswith("rrm"):
        return "rrm"
    return "gain" if metric == "accuracy_gain" else "rate"


def summary_figure(rows: list[dict[str, Any]]):
    """One bar panel per (dimension, metric family), each with its own labelled scale."""
    import matplotlib.pyplot as plt

    finite = [r for r in rows if not (isinstance(r["value"], float) and math.isnan(r["value"]))]
    panels: list[tuple[str, str]] = []
    for dim in DIMENSIONS:
        for family in FAMILIES:
            if any(r["dimension"] == dim and metric_family(r["metric"]) == family for r in finite) \
                    and (dim, family) not in panels:
                panels.append((dim, family))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.0 * max(1, len(panels)), 3.6), dpi=100,
                             squeeze=False)
    for ax, (dim, family) in zip(axes[0], panels):
        rs = [r for r in finite if r["dimension"] == dim and metric_family(r["metric"]) == family]
        values = [float(r["value"]) for r in rs]
        ax.bar([f"{r['variant']}\n{r['metric']}" for r in rs], values, color="#4878a8")
        unit, (low, high) = FAMILIES[family]
        ax.set_ylim(min(low, *values), max(high, *values))  # the family's range, widened if a value leaves it
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title(dim, fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=6)
    fig.tight_layout()
    return fig


def run_desiderata(model: Any, cfg: Any, out_dir: str | Path, model_name: str = "model", **kwargs: Any) -> dict:
    """Run every desiderata evaluation into `out_dir/<dimension>_<variant>/` and write the summary."""
    out_dir = Path(out_dir)
    results: dict[tuple[str, str], dict] = {}
    for dim, variant, recipe in desiderata_recipes(cfg):
        results[(dim, variant)] = Evaluator(model, recipe, out_dir / f"{dim}_{variant}", model_name=model_name,
                                            **kwargs).run()
    rows = summary_rows(results)
    if dist_info()[0] == 0:
        _write_summary(out_dir, rows, model_name)
    return {"model": model_name, "rows": rows}
