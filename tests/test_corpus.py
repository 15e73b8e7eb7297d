"""Every bad input of tests/corpus through the console script a user types: exit code 2, one error line
naming the culprit, no traceback, nothing half-written; skippable data errors skipped and counted."""
from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("make_corpus", Path(__file__).parent / "corpus" / "make_corpus.py")
corpus = sys.modules.setdefault("make_corpus", importlib.util.module_from_spec(_SPEC))  # dataclasses need it there
_SPEC.loader.exec_module(corpus)

ROOT = Path(tempfile.mkdtemp(prefix="lamm-corpus-"))
CASES = {c.name: c for c in corpus.build(ROOT)}
SKIP_RUNS = corpus.skip_runs(ROOT, list(CASES.values()))


@pytest.fixture(scope="module")
def results():
    """Run every case and every grouped skip run once, two at a time; remove the corpus afterwards."""
    start = time.monotonic()
    commands = [c.command for c in CASES.values()] + [cmd for cmd, _ in SKIP_RUNS.values()]
    done = corpus.run_all(commands)
    by_case = dict(zip(CASES, done))
    by_group = dict(zip(SKIP_RUNS, done[len(CASES):]))
    table = corpus.table(list(CASES.values()), [by_case[n] for n in CASES], ROOT)
    (ROOT.parent / "lamm-corpus-table.md").write_text(table + "\n")
    print(f"\n{len(CASES)} corpus cases + {len(SKIP_RUNS)} skip runs in {time.monotonic() - start:.0f} s\n{table}")
    yield by_case, by_group
    shutil.rmtree(ROOT, ignore_errors=True)


def test_the_corpus_is_big_and_varied() -> None:
    kinds = {c.kind for c in CASES.values()}
    assert len(CASES) >= 40
    assert {"image", "video", "points", "json", "benchmark", "recipe", "checkpoint"} <= kinds


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(results, name: str) -> None:
    case, result = CASES[name], results[0][name]
    where = f"{' '.join(case.command)}\n{result.stderr[-3000:]}"
    assert result.returncode == 2, where
    assert "Traceback" not in result.stderr, where
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    if case.command[:3] == ["lamm", "recipes", "validate"]:  # validate's lines are FILE:LINE: KEY: problem
        lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, where
    assert case.command[0] in lines[0] or case.command[0] == "lamm", where
    assert case.culprit in lines[0], where
    for out in case.outputs:  # no run folder (lamm-train), no results or samples (lamm-eval)
        left = [p for p in out.rglob("*") if p.name in ("run.json", "results.json", "samples.jsonl", "report.md")
                or p.name == "checkpoints"] if out.exists() else []
        assert not left, left
        assert not out.exists() or not any(p.is_dir() for p in out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("group", list(SKIP_RUNS))
def test_skippable_data_errors_are_skipped_and_counted(results, group: str) -> None:
    command, members = SKIP_RUNS[group]
    result = results[1][group]
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-3000:]}"
    assert f"skipped {len(members)} samples" in result.stdout, result.stdout[-2000:]
    logged = result.stdout + result.stderr
    for case in members:
        assert case.culprit in logged, case.name  # each skip is logged with its file or sample
    runs = Path(command[[a.startswith("paths.runs_dir=") for a in command].index(True)].split("=", 1)[1])
    assert list(runs.glob("**/checkpoints/last.ckpt/weights.safetensors")), "the run did not train on"
