"""trainer=deepspeed_zero2/3: the real Lightning DeepSpeedStrategy from config, one line where it cannot
run, resume=auto finding DeepSpeed's checkpoint folder, and the run's weights.safetensors + export
consolidated from ZeRO-2 / ZeRO-3 shards by DeepSpeed's own zero_to_fp32.

DeepSpeed trains only on CUDA GPUs (Lightning's DeepSpeedStrategy refuses other accelerators), so the
shards here are written in DeepSpeed's on-disk layout by `write_zero_checkpoint`; the real
save -> kill -> resume run is in scripts/gpu_check.sh.
"""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from lamm.build import build_model
from lamm.config import compose
from lamm.testing import tiny_model_config
from lamm.training.checkpoint_io import WEIGHTS, read_checkpoint, resolve_checkpoint
from lamm.training.deepspeed_zero import INSTALL, is_zero_checkpoint, replace_folder, write_consolidated_weights
from lamm.training.export import ADAPTER_DIR, LAMM_WEIGHTS, export_model, load_for_inference
from lamm.training.run_folder import CONFIG_FILE, find_latest_checkpoint
from lamm.training.strategy import strategy_from_config

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason=f"deepspeed is not installed ({INSTALL})")
LAMM_TRAIN = str(Path(sys.executable).parent / "lamm-train")
PREFIX = "_forward_module."  # Lightning's wrapper module inside the DeepSpeed engine


def write_zero_checkpoint(folder: Path, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                          stage: int, world_size: int, tag: str = "checkpoint") -> None:
    """`folder` as DeepSpeed's engine.save_checkpoint(folder, tag=tag, exclude_frozen_parameters=True) leaves
    it after `world_size` ranks: one fp32 parameter group, flattened and split across ranks the way each
    ZeRO stage partitions it."""
    shard_dir = folder / tag
    shard_dir.mkdir(parents=True)
    (folder / "latest").write_text(tag)
    shapes = OrderedDict((PREFIX + n, p.shape) for n, p in params.items())
    model_state = {"module": {PREFIX + n: b for n, b in buffers.items()}, "buffer_names": [PREFIX + n for n in buffers],
                   "param_shapes": [shapes], "shared_params": {}, "frozen_param_shapes": None,
                   "frozen_param_fragments": None, "ds_version": "0.19.8", "global_step": 4, "loops": {}}
    ranks: list[list[torch.Tensor]] = [[] for _ in range(world_size)]
    if stage == 2:  # the group's flat vector, padded to 2 x world size, cut into equal partitions
        flat = torch.cat([p.flatten().float() for p in params.values()])
        padded = torch.nn.functional.pad(flat, (0, 2 * world_size * math.ceil(flat.numel() / (2 * world_size)) - flat.numel()))
        for rank, part in enumerate(padded.chunk(world_size)):
            ranks[rank].append(part.clone())
        torch.save(model_state, shard_dir / "mp_rank_00_model_states.pt")
    else:  # every parameter padded to a multiple of world size and cut; a rank's pieces in one flat vector
        pieces: list[list[torch.Tensor]] = [[] for _ in range(world_size)]
        for p in params.values():
            flat = p.flatten().float()
            flat = torch.nn.functional.pad(flat, (0, world_size * math.ceil(flat.numel() / world_size) - flat.numel()))
            for rank, part in enumerate(flat.chunk(world_size)):
                pieces[rank].append(part)
        for rank in range(world_size):
            ranks[rank].append(torch.cat(pieces[rank]))
            torch.save(model_state, shard_dir / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    groups_key = "single_partition_of_fp32_groups" if stage == 2 else "fp32_flat_groups"
    for rank in range(world_size):
        optim = {"zero_stage": stage, "partition_count": world_size, groups_key: ranks[rank],
                 "optimizer_state_dict": {"state": {}}}
        torch.save({"optimizer_state_dict": optim}, shard_dir / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")


# -- the strategy from config --------------------------------------------------------------------------

@pytest.mark.parametrize("trainer, stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_configs_build_lightnings_strategy(trainer: str, stage: int) -> None:
    cfg = compose("train", [f"trainer={trainer}", "data.batch_size=3"])
    assert cfg.trainer.strategy.name == "deepspeed" and cfg.trainer.precision == "bf16-mixed"
    if not HAS_DEEPSPEED:  # construction stops at the import, with the line lamm-train prints
        with pytest.raises(ValueError, match=r"needs the `deepspeed` package, which is not installed \(pip install 'lamm\[deepspeed\]'\)"):
            strategy_from_config(cfg.trainer.strategy, "gpu")
        pytest.skip(f"deepspeed is not installed ({INSTALL}): strategy construction checked up to the import")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from lamm.training.deepspeed_zero import FolderDeepSpeedStrategy, deepspeed_strategy

    options = OmegaConf.to_container(cfg.trainer.strategy, resolve=True)
    options.pop("name")
    strategy = deepspeed_strategy(options)
    assert isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy, FolderDeepSpeedStrategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage and "offload_optimizer" not in zero and "offload_param" not in zero
    assert strategy.exclude_frozen_parameters and strategy.config["train_micro_batch_size_per_gpu"] == 3
    # Lightning's Trainer takes it with the config's precision and lamm's checkpoint plugin, as build_trainer
    # passes them (accelerator=cpu only here: constructing does not run DeepSpeed).
    import lightning as L
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision

    from lamm.training.checkpoint_plugin import FolderCheckpointIO

    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, precision=cfg.trainer.precision,
                        plugins=[FolderCheckpointIO()], logger=False, enable_progress_bar=False)
    assert trainer.strategy is strategy and isinstance(strategy.precision_plugin, DeepSpeedPrecision)
    assert strategy.precision_plugin.precision == "bf16-mixed"
    offloaded = deepspeed_strategy({**options, "offload_optimizer": True})
    assert offloaded.config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    with pytest.raises(ValueError, match=r"unknown key 'trainer.strategy.stag'.*Did you mean 'trainer.strategy.stage'"):
        deepspeed_strategy({**options, "stag": 2})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="runs on CUDA GPUs only .* this machine has no CUDA GPU"):
            strategy_from_config(cfg.trainer.strategy, "gpu")


def test_a_strategy_name_passes_through_and_an_unknown_builder_is_one_line() -> None:
    assert strategy_from_config("ddp") == "ddp" and strategy_from_config(None) == "auto"
    with pytest.raises(ValueError, match=r"trainer.strategy.name='deepsped'.*Did you mean 'deepspeed'"):
        strategy_from_config({"name": "deepsped", "stage": 2})


def test_lamm_train_deepspeed_is_one_line_where_it_cannot_run(tmp_path: Path) -> None:
    """What a user types: without deepspeed the line names the extra; with it, on a machine without
    CUDA, the line says DeepSpeed needs a GPU. Either way exit 2 and no run folder."""
    result = subprocess.run([LAMM_TRAIN, "trainer=deepspeed_zero3", "debug=fast", f"paths.runs_dir={tmp_path / 'runs'}",
                             f"paths.data_dir={tmp_path / 'data'}"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [ln for ln in result.stderr.splitlines() if ln.strip()]
    if not HAS_DEEPSPEED:
        assert line == ("lamm-train: error: trainer.strategy.name=deepspeed needs the `deepspeed` package, which is "
                        "not installed (pip install 'lamm[deepspeed]')")
    elif not torch.cuda.is_available():
        assert "runs on CUDA GPUs only (Lightning's DeepSpeedStrategy), but this machine has no CUDA GPU" in line
    assert not list((tmp_path / "runs").glob("**/run.json"))


# -- checkpoint folder, resume and export ------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model's trained tensors after 'training' (random values), as LammModule names them."""
    torch.manual_seed(0)
    cfg = {"model": tiny_model_config(encoder="small_cnn")}
    model = build_model(OmegaConf.create(cfg["model"]))
    trained = {f"model.{n}": torch.randn_like(t.float()) if t.is_floating_point() else t.clone()
               for n, t in model.trained_tensors().items()}
    trainable = {f"model.{n}" for n, _ in model.trainable_parameters().items()}
    params = {n: t for n, t in trained.items() if n in trainable}
    buffers = {n: t for n, t in trained.items() if n not in trainable}
    assert params and buffers  # LoRA, projector, CNN weights; the CNN's BatchNorm statistics
    return cfg, trained, params, buffers


def run_folder(tmp_path: Path, cfg: dict) -> Path:
    run = tmp_path / "runs" / "ds" / "2026-01-01_00-00-00"
    run.mkdir(parents=True)
    (run / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create({**cfg, "run_name": "ds"})))
    return run


def test_resume_auto_finds_the_deepspeed_checkpoint_and_an_interrupted_save_keeps_the_old_one(tmp_path: Path, trained) -> None:
    cfg, _, params, buffers = trained
    run = run_folder(tmp_path, cfg)
    last = run / "checkpoints" / "last.ckpt"
    write_zero_checkpoint(last, params, buffers, stage=2, world_size=2)
    assert is_zero_checkpoint(last) and resolve_checkpoint(last) == last
    assert find_latest_checkpoint(tmp_path / "runs", "ds") == last
    # A later save writes <name>.tmp and renames it over the old one; killed between the renames, the
    # previous checkpoint is <name>.old, which resume and reading fall back to.
    newer = run / "checkpoints" / "last.ckpt.tmp"
    write_zero_checkpoint(newer, params, buffers, stage=2, world_size=2, tag="checkpoint")
    (newer / "marker").write_text("new")
    last.rename(last.with_name("last.ckpt.old"))
    assert find_latest_checkpoint(tmp_path / "runs", "ds") == last  # found by its name, read from .old
    assert resolve_checkpoint(last) == last.with_name("last.ckpt.old")
    replace_folder(newer, last)
    assert (last / "marker").read_text() == "new" and not last.with_name("last.ckpt.old").exists()
    # Resuming it with a non-DeepSpeed trainer is one line, not a missing-file trace.
    with pytest.raises(ValueError, match="is a DeepSpeed checkpoint: resume it with the trainer that wrote it"):
        read_checkpoint(last)
    # Before the end of training there are no consolidated weights: lamm-eval says so.
    with pytest.raises(FileNotFoundError, match="holds DeepSpeed ZeRO shards but no consolidated weights.safetensors"):
        load_for_inference(run)


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_weights_and_export_come_from_the_consolidated_zero_checkpoint(tmp_path: Path, trained, stage: int) -> None:
    cfg, tensors, params, buffers = trained
    run = run_folder(tmp_path, cfg)
    last = run / "checkpoints" / "last.ckpt"
    write_zero_checkpoint(last, params, buffers, stage=stage, world_size=2)
    written = load_file(str(write_consolidated_weights(last, tensors)))
    assert written.keys() == tensors.keys()
    for name, value in tensors.items():
        torch.testing.assert_close(written[name], value.float(), rtol=0, atol=0, msg=name)
    # The run now reads like any other: lamm-eval's loader, then the export (plain peft adapter + the rest).
    model, _ = load_for_inference(run)
    for name, value in model.trained_tensors().items():
        torch.testing.assert_close(value.float(), tensors[f"model.{name}"].float(), rtol=0, atol=0)
    export_model(model, run / "export")
    adapter = load_file(str(run / "export" / ADAPTER_DIR / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    others = load_file(str(run / "export" / LAMM_WEIGHTS))
    assert any(k.startswith("projectors.") for k in others)
    # A checkpoint that lacks a trained tensor (another model config) is one line naming it.
    with pytest.raises(ValueError, match=r"has no tensor 'model.extra.weight' \(1 of"):
        write_consolidated_weights(last, [*tensors, "model.extra.weight"])



@needs_deepspeed
def test_deepspeed_refuses_to_resume_a_checkpoint_it_did_not_write(tmp_path: Path) -> None:
    from lamm.training.checkpoint_io import write_checkpoint
    from lamm.training.deepspeed_zero import deepspeed_strategy

    folder = tmp_path / "last.ckpt"
    write_checkpoint({"state_dict": {"model.w": torch.zeros(2)}, "global_step": 1}, folder)  # a DDP run's
    with pytest.raises(ValueError, match=r"last.ckpt is not a DeepSpeed checkpoint \(no `latest` file\)"):
        deepspeed_strategy({"stage": 2}).load_checkpoint(folder)
