"""Faults during writes, through the real console scripts: SIGKILL at each step of a checkpoint save,
a full disk while saving, SIGKILL of lamm-eval mid-line, and two processes on one run.

The kills are placed by the `LAMM_FAULT_INJECT` test hook (lamm/faults.py): the writer SIGKILLs its
own process at the named point, so each test hits the exact moment it names.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lamm.faults import FAULT_ENV
from lamm.training.checkpoint_io import STATE, WEIGHTS, read_checkpoint

BIN = Path(sys.executable).parent
# 6 steps, a checkpoint every 2: the second save (step 4) is the one interrupted.
TRAIN = ["debug=fast", "data.synth.sizes.train=32", "data.synth.sizes.test=8", "trainer.max_steps=6",
         "checkpoint.every_n_steps=2", "seed=3", "data.num_workers=0"]


def lamm_train(root: Path, *overrides: str, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    args = [str(BIN / "lamm-train"), *TRAIN, f"paths.runs_dir={root / 'runs'}", f"paths.data_dir={root / 'data'}",
            *overrides]
    return subprocess.run(args, capture_output=True, text=True, cwd=root, env=env, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def runs(root: Path, run_name: str) -> list[Path]:
    """The run folders of `run_name`, oldest first."""
    return sorted(p for p in (root / "runs" / run_name).iterdir() if p.is_dir())


def step_of(folder: Path) -> int:
    return torch.load(folder / STATE, weights_only=True)["global_step"]


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=0), name


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run: the run folder whose final weights every interrupted run must reach."""
    root = tmp_path_factory.mktemp("straight")
    ok(lamm_train(root, "run_name=straight"))
    [run] = runs(root, "straight")
    return run


@pytest.mark.parametrize("point", ["weights_partial", "before_rename", "between_renames"])
def test_sigkill_during_a_checkpoint_save_then_resume_auto_is_exact(tmp_path: Path, straight: Path, point: str) -> None:
    killed = lamm_train(tmp_path, "run_name=r", fault=f"checkpoint.{point}@2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    [run] = runs(tmp_path, "r")
    ckpts = run / "checkpoints"
    last, tmp, old = ckpts / "last.ckpt", ckpts / "last.ckpt.tmp", ckpts / "last.ckpt.old"
    # What the kill left on disk, as the point names it: the new copy unfinished or not yet in place.
    if point == "weights_partial":
        with pytest.raises(SafetensorError):
            load_file(str(tmp / WEIGHTS))
        assert not (tmp / STATE).exists() and step_of(last) == 2
    elif point == "before_rename":
        assert step_of(tmp) == 4 and step_of(last) == 2
    else:
        assert not last.exists() and step_of(old) == 2 and step_of(tmp) == 4
    # The previous checkpoint loads (from `.old` when the kill fell between the two renames).
    assert read_checkpoint(last)["global_step"] == 2

    resumed = ok(lamm_train(tmp_path, "run_name=r", "resume=auto"))
    first, second = runs(tmp_path, "r")
    assert first == run
    assert json.loads((second / "run.json").read_text())["resumed_from"] == str(last)
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr
    assert step_of(second / "checkpoints" / "last.ckpt") == 6
    assert_same_weights(load_file(str(second / "checkpoints" / "last.ckpt" / WEIGHTS)),
                        load_file(str(straight / "checkpoints" / "last.ckpt" / WEIGHTS)))
    assert_same_weights(load_file(str(second / "export" / "lamm_weights.safetensors")),
                        load_file(str(straight / "export" / "lamm_weights.safetensors")))


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("lamm-train: error:")]


def _assert_full_disk_stop(result: subprocess.CompletedProcess, run: Path) -> None:
    """Exit 2, one line naming the checkpoint, the step-2 checkpoint intact, no half-written copy."""
    last = run / "checkpoints" / "last.ckpt"
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert _error_lines(result) == [f"lamm-train: error: could not save the checkpoint: No space left on device; "
                                    f"the previous checkpoint is kept ({last})"], result.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert read_checkpoint(last)["global_step"] == 2


def test_full_disk_while_saving_keeps_the_previous_checkpoint_and_stops_with_one_line(tmp_path: Path) -> None:
    result = lamm_train(tmp_path, "run_name=full", fault="checkpoint.enospc@2")
    [run] = runs(tmp_path, "full")
    _assert_full_disk_stop(result, run)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real file system that fills up: tmpfs, when this process may mount one (root in a container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    # Room for the run's records and one checkpoint (~14 MB), not for the second one beside it.
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_while_saving(tmp_path: Path, small_tmpfs: Path) -> None:
    """The same on a real full file system: the libraries' own ENOSPC errors become the same one line."""
    args = ["run_name=full", f"paths.runs_dir={small_tmpfs / 'runs'}", f"paths.data_dir={tmp_path / 'data'}"]
    result = subprocess.run([str(BIN / "lamm-train"), *TRAIN, *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    [run] = sorted((small_tmpfs / "runs" / "full").iterdir())
    _assert_full_disk_stop(result, run)


def test_a_second_resume_of_a_live_run_is_refused_by_its_lock(tmp_path: Path) -> None:
    first_args = [str(BIN / "lamm-train"), *TRAIN, f"paths.runs_dir={tmp_path / 'runs'}",
                  f"paths.data_dir={tmp_path / 'data'}", "run_name=busy", "resume=auto", "trainer.max_steps=100000"]
    first = subprocess.Popen(first_args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "runs").glob("busy/*/checkpoints/last.ckpt/" + STATE)):
            assert first.poll() is None and time.time() < deadline, "the first run did not reach a checkpoint"
            time.sleep(0.2)
        [run] = runs(tmp_path, "busy")
        second = lamm_train(tmp_path, "run_name=busy", "resume=auto")
        assert second.returncode == 2, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        assert _error_lines(second) == [f"lamm-train: error: run folder {run} is in use by another lamm-train "
                                        f"(pid {first.pid}); wait for it to finish or stop it"]
    finally:
        first.kill()
        first.wait()
    # A killed holder leaves no stale lock: the OS released it with the process.
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# lamm-eval on the uninterrupted run's model, in batches of 4 (6 samples of its 8 test images).
EVAL = ["benchmark=shapes_ppl", "+benchmark.scenario.limit=16", "batch_size=4"]


def lamm_eval(straight: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    synth = straight.parents[2] / "data" / "synth-0"
    args = [str(BIN / "lamm-eval"), *EVAL, f"checkpoint={straight}", f"synth_root={synth}", f"output_dir={out}",
            "model.name=m"]
    return subprocess.run(args, capture_output=True, text=True, cwd=out.parent, env=env, timeout=300)


def test_sigkill_of_lamm_eval_mid_line_then_resume_trusts_no_torn_line(tmp_path: Path, straight: Path) -> None:
    reference = tmp_path / "reference"
    assert lamm_eval(straight, reference).returncode == 0
    ref = reference / "m" / "shapes_ppl"

    out = tmp_path / "killed"
    killed = lamm_eval(straight, out, fault="samples.torn_line@2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    samples = out / "m" / "shapes_ppl" / "samples.jsonl"
    *whole, torn = samples.read_text().split("\n")
    expected = (ref / "samples.jsonl").read_text().splitlines()
    # Batch 1 and batch 2 but for half of its last line.
    assert 4 <= len(whole) < len(expected) and whole == expected[:len(whole)]
    assert torn and expected[len(whole)].startswith(torn) and len(torn) < len(expected[len(whole)])
    assert not (out / "m" / "shapes_ppl" / "results.json").exists()

    resumed = lamm_eval(straight, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = [line for line in (resumed.stdout + resumed.stderr).splitlines() if "not a whole record" in line]
    assert len(said) == 1 and re.search(rf"{re.escape(str(samples))}: line {len(whole) + 1} is not a whole record", said[0]), said
    assert samples.read_bytes() == (ref / "samples.jsonl").read_bytes()
    assert (out / "m" / "shapes_ppl" / "results.json").read_bytes() == (ref / "results.json").read_bytes()
