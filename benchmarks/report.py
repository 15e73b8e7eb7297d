"""Write an evaluation's files: samples.jsonl (scenario order), results.json, report.md, chart.png."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

MAX_LISTED = 50


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return "-" if v is None else str(v)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def report_markdown(records: Sequence[dict[str, Any]], results: dict[str, Any]) -> str:
    """The human summary: metrics, per-task accuracy, unparseable outputs, a few wrong answers."""
    lines = [f"# {results['recipe']} -- {results['model']}", "", f"{results['n']} samples.", ""]
    source = results.get("recipe_file")
    if source:  # the exact YAML these numbers came from
        lines += [f"Recipe: `{source['path']}` (sha256 `{source['sha256']}`).", ""]
    stderr = results.get("stderr") or {}
    boot = results.get("bootstrap") or {}
    lines += ["| metric | value | SE |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v)} | {_fmt(stderr.get(k))} |" for k, v in results["metrics"].items()]
    if boot.get("samples"):
        slow = boot.get("recomputed") or {}
        note = (f"; recomputed over {', '.join(f'{n} ({k})' for k, n in slow.items())} replicates" if slow else "")
        lines += ["", f"SE: bootstrap standard error over samples ({boot['samples']} replicates, "
                      f"seed {boot['seed']}{note})."]
    inv = results.get("batch_invariance")
    if inv:
        lines += ["", "## Batch invariance", "",
                  f"Batch size {inv['batch_size']} vs 1 ({', '.join(inv['dtypes'])}): {inv['changed']} of {inv['n']} "
                  f"answers changed, {inv['changed_verdicts']} verdicts changed"
                  + (f", largest option-probability change {inv['max_prob_diff']:.2g}"
                     if inv.get("max_prob_diff") is not None else "")
                  + "."]
        lines += ["", "| metric | batch " + str(inv["batch_size"]) + " | batch 1 |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(results['metrics'].get(k))} | {_fmt(v)} |" for k, v in inv["metrics_batch_1"].items()]
        if inv["changed_ids"]:
            more = " ..." if inv["changed"] > len(inv["changed_ids"]) else ""
            lines += ["", "Changed: " + ", ".join(inv["changed_ids"]) + more]
    lines += ["", "## Per task", "", "| task | n | accuracy | chance |", "|---|---|---|---|"]
    lines += [f"| {t} | {v['n']} | {_fmt(v['accuracy'])} | {_fmt(v.get('chance'))} |"
              for t, v in results["per_task"].items()]
    bad = [r for r in records if r["parsed"] is None]
    lines += ["", f"## Unparseable outputs ({len(bad)}, counted as wrong)", ""]
    if bad:
        lines += ["| id | raw output |", "|---|---|"]
        lines += [f"| {r['id']} | {json.dumps(r['raw'])[:120]} |" for r in bad[:MAX_LISTED]]
        if len(bad) > MAX_LISTED:
            lines.append(f"\n... and {len(bad) - MAX_LISTED} more (see samples.jsonl, `parsed: null`).")
    else:
        lines.append("None.")
    wrong = [r for r in records if r["correct"] is False and r["parsed"] is not None][:10]
    if wrong:
        lines += ["", "## Some wrong answers", "", "| id | answer | parsed | raw |", "|---|---|---|---|"]
        lines += [f"| {r['id']} | {json.dumps(r['answer'])[:60]} | {json.dumps(r['parsed'])[:60]} | "
                  f"{json.dumps(r['raw'])[:80]} |" for r in wrong]
    return "\n".join(lines) + "\n"


def bar_chart(path: Path, title: str, values: dict[str, float], ylabel: str = "value",
              errors: dict[str, float | None] | None = None) -> None:
    """A bar chart PNG (matplotlib, Agg backend: no display needed); `errors`: +-1 SE bars where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(k, v) for k, v in values.items() if isinstance(v, (int, float)) and not math.isnan(v)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(items) + 2), 3.5), dpi=100)
    yerr = [(errors or {}).get(k) for k, _ in items]
    ax.bar([k for k, _ in items], [v for _, v in items], color="#4878a8", capsize=3, ecolor="#222222",
           yerr=[math.nan if e is None else e for e in yerr] if any(e is not None for e in yerr) else None)
    for i, (_, v) in enumerate(items):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_outputs(out_dir: Path, records: Sequence[dict[str, Any]], results: dict[str, Any]) -> None:
    """samples.jsonl (rewritten in scenario order), results.json, report.md and chart.png."""
    _atomic_write(out_dir / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _atomic_write(out_dir / "results.json", json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    _atomic_write(out_dir / "report.md", report_markdown(records, results))
    values = dict(results["metrics"])
    values.update({f"acc/{t}": v["accuracy"] for t, v in results["per_task"].items() if v["accuracy"] is not None})
    bar_chart(out_dir / "chart.png", f"{results['recipe']} -- {results['model']}", values,
              errors=results.get("stderr"))
