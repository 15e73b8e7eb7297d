"""Evaluate a freshly trained model on benchmark recipes and print the held-out table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig


def evaluate_after_training(model: Any, cfg: DictConfig, run_dir: Path, recipes: Sequence[str]) -> dict[str, Any]:
    """Run each `conf/benchmark` recipe on `model` into `run_dir/eval/<recipe>/`; print one table per recipe.

    Prompts use the template and system prompt the model was trained with; the built-in scenarios
    read the same synthetic data folder training used (its held-out `test` split).
    """
    from rich.console import Console
    from rich.table import Table

    from lamm.benchmarks.evaluator import evaluate
    from lamm.config import compose
    from lamm.recipes.catalog import find_recipe
    from lamm.recipes.hashing import recipe_record

    synth = cfg.data.get("synth") or {}
    synth_root = Path(cfg.paths.data_dir) / f"synth-{synth.get('seed', 0)}"
    console = Console()
    all_results = {}
    for name in recipes:
        bench = compose("eval", [f"benchmark={name}", f"synth_root={synth_root}"]).benchmark
        source = recipe_record("benchmark", name, find_recipe(name, kind="benchmark").path)  # its sha256, for results.json
        results = evaluate(model, bench, run_dir / "eval" / name, template=cfg.data.template,
                           system_prompt=cfg.data.get("system_prompt"), model_name=cfg.run_name, progress=False,
                           recipe_file=source)
        table = Table(title=f"held-out: {name} ({results['n']} samples)")
        for column in ("task", "n", "accuracy", "chance"):
            table.add_column(column, justify="right" if column != "task" else "left")
        for task, row in results["per_task"].items():
            acc, chance = row["accuracy"], row["chance"]
            table.add_row(task, str(row["n"]), "-" if acc is None else f"{acc:.1%}", "-" if chance is None else f"{chance:.1%}")
        closed = [r["accuracy"] for r in results["per_task"].values() if r["chance"] is not None and r["chance"] <= 0.35]
        if closed:
            table.caption = f"mean accuracy on tasks with chance <= 35%: {sum(closed) / len(closed):.1%}"
        console.print(table)
        all_results[name] = results
    return all_results
