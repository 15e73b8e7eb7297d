"""Error bars (bootstrap SE), `lamm-eval compare` and `check_batch_invariance`, hand-checked on constructed runs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lamm.benchmarks.base import Metric
from lamm.benchmarks.bootstrap import BootstrapSpec, replicate_values, standard_errors
from lamm.benchmarks.metrics import CIDEr, Accuracy

BIN = Path(sys.executable).parent


def choice_record(i: int, right: bool, task: str = "t") -> dict:
    """A closed-set record as the evaluator writes it, answered right or wrong."""
    answer = "red" if i % 2 else "blue"
    raw = answer if right else ("blue" if answer == "red" else "red")
    return {"id": f"s{i:03d}", "task": task, "prompt": "p", "raw": raw, "options": ["red", "blue"],
            "labels": ["red", "blue"], "answer": answer, "extra": {}, "parsed": raw, "correct": right}


class AccuracyRecomputed(Metric):
    """Accuracy without a per-sample decomposition: the bootstrap has to recompute it."""

    name = "accuracy_recomputed"

    def compute(self, records):
        return {"accuracy": float(np.mean([Accuracy().judge(r) for r in records]))}


def test_bootstrap_se_seeded_and_close_to_the_analytical_value() -> None:
    n, right = 400, 100  # p = 0.25: sqrt(p (1 - p) / n) = 0.021651
    records = [choice_record(i, i < right) for i in range(n)]
    acc = Accuracy()
    computed = [(acc, acc.compute(records))]
    spec = BootstrapSpec(samples=1000, seed=0)
    se, recomputed = standard_errors(computed, records, spec)
    assert se == standard_errors(computed, records, BootstrapSpec(samples=1000, seed=0))[0]  # same seed, same SE
    assert se["accuracy"] != standard_errors(computed, records, BootstrapSpec(samples=1000, seed=1))[0]["accuracy"]
    assert se["accuracy"] == pytest.approx(math.sqrt(0.25 * 0.75 / n), rel=0.08)  # 1000 replicates: SE of SE ~2%
    assert recomputed == {}  # accuracy is a mean over samples: vectorised, all 1000 replicates
    # The capped recompute sees the very same replicates: its values are the vectorised ones' prefix.
    fast, _ = replicate_values(acc, records, ["accuracy"], spec)
    capped = BootstrapSpec(1000, 0, max_recompute=50)
    slow, slow_keys = replicate_values(AccuracyRecomputed(), records, ["accuracy"], capped)
    assert slow_keys == {"accuracy"} and len(slow["accuracy"]) == 50
    np.testing.assert_allclose(slow["accuracy"], fast["accuracy"][:50], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"bootstrap\.sample: unknown key"):
        BootstrapSpec.from_config({"sample": 10})
    with pytest.raises(ValueError, match=r"bootstrap\.seed: expected a whole number"):
        BootstrapSpec.from_config({"seed": -1})


def test_cider_bootstrap_recomputes_over_resampled_records_quickly() -> None:
    words = ["red circle", "blue square", "green star", "small red circle", "a blue square left"]
    records = [{"id": str(i), "raw": words[i % 5], "answer": [words[i % 5], words[(i + 1) % 5]]} for i in range(60)]
    cider = CIDEr(tokenizer="simple")
    whole = cider.compute(records)
    assert cider.resampled(records)(list(range(60))) == whole  # replicate = identity: the metric itself
    start = time.perf_counter()
    se, recomputed = standard_errors([(cider, whole)], records, BootstrapSpec(samples=1000, seed=0, max_recompute=100))
    assert recomputed == {"cider": 100} and se["cider"] > 0
    assert time.perf_counter() - start < 5.0


def write_run(folder: Path, pattern: list[bool], metrics: dict | None = None) -> Path:
    """A lamm-eval output folder (results.json + samples.jsonl) with the given per-sample verdicts."""
    folder.mkdir(parents=True)
    records = [choice_record(i, ok) for i, ok in enumerate(pattern)]
    acc = sum(pattern) / len(pattern)
    results = {"recipe": "constructed", "model": folder.name, "n": len(records),
               "metrics": metrics or {"accuracy": acc},
               "stderr": {"accuracy": math.sqrt(acc * (1 - acc) / len(pattern))},
               "config": {"metrics": ["accuracy"]}}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_compare_console_script_difference_and_p_values(tmp_path: Path) -> None:
    # 20 paired samples: 4 right in both, 1 right only in A, 7 right only in B, 8 wrong in both.
    a = [True] * 4 + [True] * 1 + [False] * 7 + [False] * 8
    b = [True] * 4 + [False] * 1 + [True] * 7 + [False] * 8
    run_a, run_b = write_run(tmp_path / "m" / "A", a), write_run(tmp_path / "m" / "B", b)
    out = tmp_path / "figs" / "ab"
    proc = subprocess.run([str(BIN / "lamm-eval"), "compare", str(run_a), str(run_b / "results.json"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "figs" / "ab.md").read_text()
    assert (tmp_path / "figs" / "ab.png").stat().st_size > 1000
    # By hand: accuracy 5/20 -> 11/20, difference +0.3. McNemar on 1 vs 7 discordant pairs:
    # exact p = 2 * (C(8,0) + C(8,1)) / 2^8 = 18/256 = 0.0703125; chi-square with continuity
    # correction (|1 - 7| - 1)^2 / 8 = 3.125, p = erfc(sqrt(3.125 / 2)) = erfc(1.25) = 0.0771.
    row = next(line for line in table.splitlines() if line.startswith("| accuracy | 2. m/B"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == ["0.5500", "0.1112", "+0.3000"], row
    # Paired bootstrap SE of the difference: the plug-in SD of d in {-1, 0, 1} over sqrt(n):
    # sqrt((8/20 - 0.3^2) / 20) = 0.1245.
    assert float(cells[5]) == pytest.approx(0.1245, rel=0.08)
    assert float(cells[6]) < 0.05 and cells[7] == "20"
    mc = next(line for line in table.splitlines() if line.startswith("| 2. m/B"))
    assert [c.strip() for c in mc.strip("|").split("|")][1:] == ["20", "4", "1", "7", "8", "0.07031", "0.0771"], mc
    assert "0.07031" in proc.stdout and "+0.3000" in proc.stdout


def test_compare_bad_input_is_one_line_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    run_a = write_run(tmp_path / "m" / "A", [True, False])
    missing = tmp_path / "m" / "nowhere"
    proc = subprocess.run([str(BIN / "lamm-eval"), "compare", str(run_a), str(missing)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"error: {missing}: no such file" in proc.stderr
    # The same entry point in-process (saves a process start): no metric in common names the file.
    from lamm.cli.compare import main as compare_main

    monkeypatch.chdir(tmp_path)
    other = write_run(tmp_path / "m" / "C", [True, True], metrics={"cider": 0.5})
    with pytest.raises(SystemExit) as exit_info:
        compare_main([str(run_a), str(other)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().count("\n") == 0, err
    assert f"error: {other / 'results.json'}: no metric in common" in err
    (run_a / "samples.jsonl").unlink()
    with pytest.raises(SystemExit) as exit_info:
        compare_main([str(run_a), str(other)])
    assert exit_info.value.code == 2 and f"{run_a / 'samples.jsonl'}: no such file" in capsys.readouterr().err
    assert not list(tmp_path.glob("compare.*"))  # nothing half-written


def test_lamm_eval_bootstrap_and_batch_invariance_check(tmp_path: Path) -> None:
    from lamm.datasets.synth import generate

    generate(tmp_path / "synth", sizes={"train": 2, "test": 16}, kinds=("shapes",), image_size=32)
    proc = subprocess.run(
        [str(BIN / "lamm-eval"), "benchmark=shapes_ppl", "+benchmark.scenario.limit=6", "batch_size=4",
         'model.overrides=["model/llm=tiny_random","model/encoder=small_cnn"]', f"synth_root={tmp_path / 'synth'}",
         f"output_dir={tmp_path / 'out'}", "model.name=m", "threads=1",
         "check_batch_invariance=true", "bootstrap.samples=300", "bootstrap.seed=7"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "out" / "m" / "shapes_ppl"
    results = json.loads((folder / "results.json").read_text())
    assert results["bootstrap"] == {"samples": 300, "seed": 7, "max_recompute": 200,
                                    "recomputed": {"ece": 200, "mean_confidence": 200}}
    assert set(results["stderr"]) == set(results["metrics"]) and results["stderr"]["accuracy"] >= 0
    # The same records and seed give the same SE in this process (reproducible from samples.jsonl).
    from lamm.benchmarks.evaluator import read_records

    records = read_records(folder / "samples.jsonl")
    se, _ = standard_errors([(Accuracy(), {"accuracy": 0.0})], records, BootstrapSpec(samples=300, seed=7))
    assert results["stderr"]["accuracy"] == pytest.approx(se["accuracy"], abs=1e-6)
    inv = results["batch_invariance"]
    assert inv["batch_size"] == 4 and inv["reference_batch_size"] == 1 and inv["n"] == results["n"] > 4
    assert inv["dtypes"] == ["float32"] and inv["changed"] == 0 and inv["changed_verdicts"] == 0  # fp32: invariant
    assert inv["metrics_batch_1"]["accuracy"] == results["metrics"]["accuracy"]
    report = (folder / "report.md").read_text()
    assert "| metric | value | SE |" in report and "## Batch invariance" in report
    assert f"Batch size 4 vs 1 (float32): 0 of {results['n']} answers changed" in report
