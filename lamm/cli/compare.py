"""`lamm-eval compare RUN_A RUN_B [...]`: every shared metric of lamm-eval runs side by side.

    lamm-eval compare outputs/eval/model-a/shapes_ppl outputs/eval/model-b/shapes_ppl
    lamm-eval compare A/results.json B/results.json C --out figs/ab --samples 2000 --seed 1

Prints the table (differences to the first run, paired bootstrap, McNemar on per-sample correctness)
and writes it as OUT.md with a bar chart OUT.png (default OUT: ./compare).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

PROG = "lamm-eval compare"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RESULTS",
                        help="lamm-eval output folders (or their results.json); the first is the baseline")
    parser.add_argument("--out", default="compare", help="writes OUT.md and OUT.png (default: compare)")
    parser.add_argument("--samples", type=int, default=1000, help="paired bootstrap replicates (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return parser


def run(argv: Sequence[str]) -> int:
    """Compare the runs in `argv`; 0 on success (bad input raises, the error boundary reports it)."""
    args = build_parser().parse_args(argv)
    if len(args.runs) < 2:
        build_parser().error("give at least two runs to compare")
    from rich.console import Console
    from rich.table import Table

    from lamm.benchmarks.bootstrap import BootstrapSpec
    from lamm.benchmarks.compare import compare_runs, comparison_chart, load_run, markdown, mcnemar_cells, table_cells

    spec = BootstrapSpec.from_config({"samples": args.samples, "seed": args.seed}, "--samples/--seed")
    runs = [load_run(p) for p in args.runs]
    shared, rows, tests = compare_runs(runs, spec)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, png = out.with_name(out.name + ".md"), out.with_name(out.name + ".png")
    md.write_text(markdown(runs, rows, tests), encoding="utf-8")
    comparison_chart(png, shared, runs)
    console = Console(width=max(Console().width, 160))  # wide enough that no number is wrapped when piped
    for title, (head, cells) in (("metrics (diff vs the first run)", table_cells(rows)),
                                 ("per-sample correctness (McNemar)", mcnemar_cells(tests))):
        table = Table(title=title)
        for h in head:
            table.add_column(h)
        for c in cells:
            table.add_row(*c)
        console.print(table)
    console.print(f"wrote {md} and {png}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry from `lamm-eval compare ...` (the error boundary turns bad input into one line, exit 2)."""
    from lamm.cli.errors import run_guarded

    sys.exit(run_guarded(PROG, lambda: run(sys.argv[2:] if argv is None else argv)))
