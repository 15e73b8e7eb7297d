"""The Trainer from config: trainer.* passes through (validated against Trainer.__init__), loggers and
callbacks by name, gradient accumulation from data.global_batch_size."""
from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lamm.config import compose
from lamm.training.trainer import accumulation_for, gradient_accumulation, trainer_arguments

LAMM_TRAIN = str(Path(sys.executable).parent / "lamm-train")
TINY = ["debug=fast", "data.synth.sizes.train=32", "data.synth.sizes.test=8", "data.num_workers=0"]


def run_train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [LAMM_TRAIN, *TINY, f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}", *overrides]
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)


def the_run(tmp_path: Path) -> Path:
    [run] = [p.parent for p in (tmp_path / "runs").glob("**/run.json")]
    return run


def test_a_wrong_trainer_key_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    result = run_train(tmp_path, "+trainer.max_step=5")
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [ln for ln in result.stderr.splitlines() if "error" in ln]
    assert "unknown trainer key 'trainer.max_step'" in line and "Did you mean 'trainer.max_steps'?" in line
    assert "Traceback" not in result.stderr
    # Without `+` the key-check of the command line refuses it before Hydra starts, also in one line.
    plain = run_train(tmp_path, "trainer.bogus_key=1")
    assert plain.returncode == 2 and "trainer.bogus_key" in plain.stderr and "Traceback" not in plain.stderr


def test_keys_lamm_train_sets_are_refused_with_the_reason(tmp_path: Path) -> None:
    result = run_train(tmp_path, "+trainer.use_distributed_sampler=true")
    assert result.returncode == 2
    assert "trainer.use_distributed_sampler cannot be set: lamm-train sets it (the resumable sampler" in result.stderr
    assert not list((tmp_path / "runs").glob("**/checkpoints"))  # refused before any training


def test_trainer_arguments_pass_through_and_loggers_by_name(tmp_path: Path) -> None:
    """A Trainer argument the config does not list reaches the Trainer; logger=csv leaves out tensorboard;
    callbacks=[default,lr_monitor] adds Lightning's LR monitor."""
    result = run_train(tmp_path, "trainer.max_steps=5", "+trainer.limit_train_batches=2", "logger=csv",
                       "callbacks=[default,lr_monitor]", "model/fusion=gated_xattn")
    assert result.returncode == 0, result.stderr[-3000:]
    run = the_run(tmp_path)
    assert (run / "logs/metrics.csv").exists() and (run / "loss.png").exists() and not (run / "tb").exists()
    header = (run / "logs/metrics.csv").read_text().splitlines()[0]
    assert "lr-AdamW" in header  # LearningRateMonitor's columns
    # limit_train_batches reached the Trainer: the run stops after 2 of its 5 steps
    state = torch.load(run / "checkpoints/last.ckpt/state.pt", weights_only=True)
    assert state["global_step"] == 2


def test_unknown_logger_and_missing_package_are_one_line(tmp_path: Path) -> None:
    result = run_train(tmp_path, "+logger.tensorbord={}")
    assert result.returncode == 2 and "unknown logger 'tensorbord'. Did you mean 'tensorboard'?" in result.stderr
    if importlib.util.find_spec("wandb") is None:  # the missing-package line, where wandb is not installed
        missing = run_train(tmp_path, "logger=[csv,wandb]")
        assert missing.returncode == 2
        assert "logger=wandb needs the `wandb` package, which is not installed (pip install wandb)" in missing.stderr
        assert "Traceback" not in missing.stderr


def test_global_batch_size_accumulates_on_one_device(tmp_path: Path) -> None:
    """data.batch_size=4 on one process with data.global_batch_size=8: 2 micro-batches per optimizer step."""
    result = run_train(tmp_path, "trainer.max_steps=2", "data.global_batch_size=8", "logger=csv")
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(the_run(tmp_path) / "checkpoints/last.ckpt/state.pt", weights_only=True)
    assert state["global_step"] == 2 and state["LammDataModule"]["consumed"] == 16  # 2 steps x 8 samples
    with open(the_run(tmp_path) / "logs/metrics.csv") as f:
        assert max(int(r["step"]) for r in csv.DictReader(f)) <= 2


def test_global_batch_size_that_does_not_divide_is_one_line(tmp_path: Path) -> None:
    result = run_train(tmp_path, "data.global_batch_size=6")
    assert result.returncode == 2
    assert ("data.global_batch_size=6 is not a positive multiple of data.batch_size x devices x num_nodes "
            "= 4 x 1 x 1 = 4") in result.stderr


def test_accumulation_derivation_for_many_devices() -> None:
    assert gradient_accumulation(256, 32, devices=8) == 1
    assert gradient_accumulation(256, 32, devices=1) == 8
    assert gradient_accumulation(256, 16, devices=8, num_nodes=2) == 1
    assert gradient_accumulation(128, 16, devices=4) == 2
    with pytest.raises(ValueError, match="not a positive multiple"):
        gradient_accumulation(256, 32, devices=3)


def test_llava15_recipes_mean_the_same_optimisation_on_1_or_8_gpus() -> None:
    for name, global_batch in (("llava15_stage1", 256), ("llava15_stage2", 128)):
        cfg = compose("train", [f"experiment={name}", "init_from=x"])
        assert cfg.data.global_batch_size == global_batch
        per_device = int(cfg.data.batch_size)
        assert per_device * 8 * accumulation_for(cfg, devices=8, num_nodes=1) == global_batch
        assert per_device * 1 * accumulation_for(cfg, devices=1, num_nodes=1) == global_batch
        assert accumulation_for(cfg, devices=1, num_nodes=1) == 8


def test_every_shipped_trainer_config_passes_the_argument_check() -> None:
    from lamm.config import group_options

    for trainer in group_options("trainer"):
        trainer_arguments(compose("train", [f"trainer={trainer}"]).trainer)


def test_global_batch_counts_every_process_of_every_node(tmp_path: Path) -> None:
    """`lamm-train trainer=ddp_cpu trainer.num_nodes=2 data.batch_size=4 data.global_batch_size=64`: the Trainer
    that lamm-train builds accumulates 64 / (4 per device x 2 devices x 2 nodes) = 4 micro-batches."""
    from lamm.training.trainer import build_trainer, check_run_config

    cfg = compose("train", ["trainer=ddp_cpu", "trainer.num_nodes=2", "data.batch_size=4",
                            "data.global_batch_size=64", "logger=csv"])
    check_run_config(cfg)
    trainer = build_trainer(cfg, tmp_path)
    assert (trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches) == (2, 2, 4)
    assert accumulation_for(cfg, devices=8, num_nodes=2) == 1 and accumulation_for(cfg, devices=1, num_nodes=4) == 4
    uneven = compose("train", ["trainer=ddp", "trainer.num_nodes=2", "data.batch_size=4", "data.global_batch_size=24"])
    with pytest.raises(ValueError, match=r"not a positive multiple of data.batch_size x devices x num_nodes = 4 x 2 x 2 = 16"):
        check_run_config(uneven)
