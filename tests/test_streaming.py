"""Streamed training data under lamm-train: shards split across 2 DDP processes x 2 workers read every
sample once per epoch; SIGKILL + resume=auto trains on the same samples to the same weights; streamed
and alternating mixtures; truncated shards (one line, or skipped and counted); exact stream positions.

The runs record the samples they train on through the `LAMM_SAMPLE_LOG` test hook
(lamm/training/datamodule.py) and are killed by `LAMM_FAULT_INJECT` (lamm/faults.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lamm.datasets import build_dataset
from lamm.datasets.testing import dummy_media_specs, write_colour_jsonl_shards, write_colour_shards
from lamm.faults import FAULT_ENV
from lamm.tokens import TextLayout
from lamm.training.checkpoint_io import WEIGHTS, read_checkpoint
from lamm.training.datamodule import SAMPLE_LOG_ENV

BIN = Path(sys.executable).parent
SHARDS, PER_SHARD = 6, 4
# 2 processes x 2 workers = 4 readers over 6 shards: two readers get 2 shards, two get 1. 4 steps of
# 4 samples per process: the 2-shard readers finish epoch 0, the 1-shard readers read 2 epochs.
# No LoRA dropout: a checkpoint holds rank 0's RNG state only (tests/test_faults.py says why).
WDS = ["data=webdataset", "data.template=chat"]
DDP = ["trainer=ddp_cpu", "model.lora.dropout=0", "data.num_workers=2", "trainer.max_steps=4",
       "checkpoint.every_n_steps=2", "seed=3", "data.shuffle_buffer=3"]


def lamm_train(root: Path, *overrides: str, log: Path | None = None, fault: str | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, SAMPLE_LOG_ENV)}
    if log is not None:
        env[SAMPLE_LOG_ENV] = str(log)
    if fault is not None:
        env[FAULT_ENV] = fault
    args = [str(BIN / "lamm-train"), "debug=fast", f"paths.runs_dir={root / 'runs'}",
            *overrides]
    # A new session: a killed rank 0 leaves its rank-1 child behind, which the test then ends.
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def batches(log: Path) -> dict[int, list[dict]]:
    """The sample log per rank: one record per training batch, in order."""
    return {int(f.stem.removeprefix("rank")): [json.loads(line) for line in f.read_text().splitlines()]
            for f in sorted(log.glob("rank*.jsonl"))}


def run_folders(root: Path, run_name: str) -> list[Path]:
    return sorted(p for p in (root / "runs" / run_name).iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, list[str]]:
    """6 WebDataset shards of 8 images each, as the brace pattern a user types, and every sample id."""
    folder = tmp_path_factory.mktemp("shards")
    ids = write_colour_shards(folder, SHARDS, PER_SHARD)
    return f'data.path="{folder}/train-{{0..{SHARDS - 1}}}.tar"', ids


@pytest.fixture(scope="module")
def straight(tmp_path_factory, shards) -> tuple[Path, dict[int, list[dict]]]:
    """The uninterrupted 2-process run (`lamm-train data=webdataset data.path=...`): run folder and sample log."""
    root = tmp_path_factory.mktemp("straight")
    ok(lamm_train(root, *WDS, shards[0], *DDP, "run_name=straight", log=root / "log"))
    [run] = run_folders(root, "straight")
    return run, batches(root / "log")


def test_two_processes_two_workers_read_every_sample_once_per_epoch(straight, shards) -> None:
    _, log = straight
    assert sorted(log) == [0, 1] and all(len(rank) == 4 for rank in log.values())
    by_epoch: dict[int, list[str]] = {}
    for rank in log.values():
        assert [b["step"] for b in rank] == list(range(4))
        assert [b["reader"] for b in rank] == [0, 1] * 2  # the DataLoader takes its workers in turn
        for batch in rank:
            for sample, epoch in zip(batch["ids"], batch["epochs"]):
                by_epoch.setdefault(epoch, []).append(sample)
    assert sorted(by_epoch[0]) == sorted(shards[1])  # every sample exactly once in epoch 0
    assert len(by_epoch[1]) == 8 and len(set(by_epoch[1])) == 8  # the 1-shard readers' second pass
    assert any(b["ids"] != sorted(b["ids"]) for rank in log.values() for b in rank)  # shuffled within blocks


def test_sigkill_mid_epoch_then_resume_auto_trains_the_same_samples_to_the_same_weights(tmp_path, straight,
                                                                                      shards) -> None:
    run, expected = straight
    # Killed between the renames of the step-4 save: the step-2 checkpoint survives as last.ckpt.old.
    killed = lamm_train(tmp_path, *WDS, shards[0], *DDP, "run_name=r", log=tmp_path / "killed",
                        fault="checkpoint.between_renames@2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    [first] = run_folders(tmp_path, "r")
    saved = read_checkpoint(first / "checkpoints" / "last.ckpt")
    step = saved["global_step"]
    assert step == 2
    positions = saved["LammDataModule"]["stream"]["ranks"][0]["positions"]
    assert positions[0]["emitted"] > 0  # the kill left reader 0 in the middle of a shuffle block

    ok(lamm_train(tmp_path, *WDS, shards[0], *DDP, "run_name=r", "resume=auto", log=tmp_path / "resumed"))
    before, after = batches(tmp_path / "killed"), batches(tmp_path / "resumed")
    for rank, straight_batches in expected.items():
        seen = [b for b in before[rank] if b["step"] < step] + after[rank]
        assert [(b["ids"], b["epochs"]) for b in seen] == [(b["ids"], b["epochs"]) for b in straight_batches]
    resumed = run_folders(tmp_path, "r")[-1]
    got = load_file(str(resumed / "checkpoints" / "last.ckpt" / WEIGHTS))
    want = load_file(str(run / "checkpoints" / "last.ckpt" / WEIGHTS))
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6, rtol=0), name


def test_lamm_train_mixture_alternating_of_a_json_file_and_shards(tmp_path, shards) -> None:
    """The shipped mixture (a lamm source and an mmgpt source, weights 2:1) with its second source
    switched to shards: each batch comes from one source, in weighted round-robin order."""
    write_colour_jsonl_shards(tmp_path / "json", 1, 12, stem="lamm")
    result = ok(lamm_train(
        tmp_path, "data=mixture", "data.mode=alternating", f"data.datasets.0.path={tmp_path / 'json' / 'lamm-0.jsonl'}",
        "data.datasets.1.name=webdataset", shards[0].replace("data.path", "data.datasets.1.path"),
        "data.num_workers=2", "trainer.max_steps=6", log=tmp_path / "log"))
    assert "skipped 0 samples" in result.stdout
    [rank0] = batches(tmp_path / "log").values()
    sources = []
    for batch in rank0:
        kinds = {"json" if i.startswith("lamm") else "shards" for i in batch["ids"]}
        assert len(kinds) == 1 and len(batch["ids"]) == 4  # never a batch straddling two sources
        sources.append(kinds.pop())
    # each of the 2 workers: json, shards, json (smooth weighted round-robin of 2:1), taken in turn
    assert sources == ["json", "json", "shards", "shards", "json", "json"]


@pytest.fixture(scope="module")
def truncated(tmp_path_factory) -> Path:
    """Two shards; the second is cut inside the image of its third sample."""
    folder = tmp_path_factory.mktemp("truncated")
    write_colour_shards(folder, 2, 6)
    shard = folder / "train-1.tar"
    data = shard.read_bytes()
    cut = data.index(b"train1_2.png") + 512 + 20  # 20 bytes into that member's data
    shard.write_bytes(data[:cut])
    return folder


def test_a_truncated_shard_is_one_line_naming_shard_and_member(tmp_path, truncated) -> None:
    result = lamm_train(tmp_path, *WDS, f'data.path="{truncated}/train-{{0..1}}.tar"', "data.on_error=raise",
                        "data.shuffle=false", "data.batch_size=2", "trainer.max_steps=6")
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"lamm-train: error: data error in {truncated / 'train-1.tar'} sample 'train1_2': "
                           "cannot read shard: member train1_2.png is cut short"), line
    assert "Traceback" not in result.stderr


def test_a_truncated_shard_is_skipped_and_counted(tmp_path, truncated) -> None:
    # 6 + 2 readable samples per epoch, 2 per step: 6 steps read one epoch and the start of the next.
    result = ok(lamm_train(tmp_path, *WDS, f'data.path="{truncated}/train-{{0..1}}.tar"',
                           "data.on_error=skip", "data.shuffle=false", "data.batch_size=2", "trainer.max_steps=6",
                           log=tmp_path / "log"))
    assert "skipped 1 samples (bad_shard=1)" in " ".join(result.stdout.split())  # epoch 1 is not at it yet
    assert not (tmp_path / "data").exists()  # debug=fast generated no built-in shapes data for a shard run
    [rank0] = batches(tmp_path / "log").values()
    seen = [i for b in rank0 for i in b["ids"]]
    assert seen[:8] == [f"train0_{j}" for j in range(6)] + ["train1_0", "train1_1"]


# -- stream positions, in process ---------------------------------------------------------------------

SPECS = dummy_media_specs({"image": 4})


@pytest.mark.parametrize("kind", ["webdataset", "jsonl_shards"])
def test_every_position_resumes_to_the_same_continuation(tok, tmp_path, kind) -> None:
    if kind == "webdataset":
        write_colour_shards(tmp_path, 3, 5)
        path = f"{tmp_path}/train-{{0..2}}.tar"
    else:
        write_colour_jsonl_shards(tmp_path, 3, 5)
        path = [str(tmp_path / f"train-{s}.jsonl") for s in range(3)]
    ds = build_dataset({"name": kind, "path": path, "shuffle": True, "shuffle_buffer": 4, "seed": 7},
                       SPECS, tok, TextLayout())
    for slot, total in ((0, 1), (1, 2)):
        items = list(islice(ds.stream(slot, total), 28))  # past the first epoch
        ids = [item.sample.id for item in items]
        for k in range(24):
            again = [item.sample.id for item in islice(ds.stream(slot, total, items[k].position), 4)]
            assert again == ids[k + 1:k + 5], (slot, k)
    first = [i.sample.id for i in islice(ds.stream(0, 1), 15)]
    second = [i.sample.id for i in islice(ds.stream(0, 1), 30)][15:]
    assert sorted(first) == sorted(second) and first != second  # each epoch: every sample, a new order


def test_mixed_stream_mixture_follows_the_weights_and_resumes(tok, tmp_path) -> None:
    write_colour_shards(tmp_path / "a", 2, 10, stem="a")
    write_colour_jsonl_shards(tmp_path / "b", 2, 10, stem="b")
    cfg = {"name": "mixture", "mode": "mixed", "seed": 1, "datasets": [
        {"name": "webdataset", "path": [str(tmp_path / "a" / f"a-{s}.tar") for s in range(2)], "weight": 3},
        {"name": "jsonl_shards", "path": [str(tmp_path / "b" / f"b-{s}.jsonl") for s in range(2)], "weight": 1}]}
    ds = build_dataset(cfg, SPECS, tok, TextLayout())
    items = list(islice(ds.stream(0, 1), 200))
    share = sum(item.sample.id.startswith("a") for item in items) / len(items)
    assert 0.68 < share < 0.82
    again = [item.sample.id for item in islice(ds.stream(0, 1, items[99].position), 100)]
    assert again == [item.sample.id for item in items[100:]]
