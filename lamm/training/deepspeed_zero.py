"""DeepSpeed ZeRO-2 / ZeRO-3 runs in lamm's run folder (`trainer=deepspeed_zero2|3`, `pip install lamm[deepspeed]`).

DeepSpeed writes its own checkpoint folder (bypassing lamm's FolderCheckpointIO):

    checkpoints/last.ckpt/latest                      the tag of the state inside ("checkpoint")
    checkpoints/last.ckpt/checkpoint/*_model_states.pt, *_optim_states.pt   one shard per rank
    checkpoints/last.ckpt/weights.safetensors         the final checkpoint only: consolidated trained tensors

Saves go to `<name>.tmp` and replace the old folder by rename (as FolderCheckpointIO does), so a kill
mid-save keeps the previous checkpoint; `resume=auto` finds it by the same name. Frozen weights are
left out of the shards (`exclude_frozen_parameters`): like every lamm checkpoint they come from the
config. At the end of training rank 0 gathers the trained tensors from the ZeRO shards into
`weights.safetensors`, so lamm-eval, lamm-chat, init_from and the export read that run like any other.
DeepSpeed's shards are pickles: lamm reads them only to resume or consolidate the run it trains.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from safetensors.torch import save_file

from lamm.training.checkpoint_io import LATEST, WEIGHTS, is_zero_checkpoint

INSTALL = "pip install 'lamm[deepspeed]'"
WRAPPER_PREFIX = "_forward_module."  # Lightning's wrapper around the LightningModule inside the engine


def deepspeed_strategy(options: dict[str, Any]) -> "FolderDeepSpeedStrategy":
    """Lightning's DeepSpeedStrategy with lamm's run-folder saves, from the `trainer.strategy` options
    (one-line ValueError when DeepSpeed is not installed or an option is unknown)."""
    from lamm.training.strategy import check_options

    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError(f"trainer.strategy.name=deepspeed needs the `deepspeed` package, which is not installed ({INSTALL})")
    check_options(DeepSpeedStrategy, options, "deepspeed")
    return FolderDeepSpeedStrategy(**options)


def check_cuda(accelerator: str | None) -> None:
    """One line, before any model is built, where DeepSpeed cannot run: Lightning's DeepSpeedStrategy needs CUDA."""
    if accelerator == "cpu" or not torch.cuda.is_available():
        where = "trainer.accelerator=cpu" if accelerator == "cpu" else "this machine has no CUDA GPU"
        raise ValueError(f"trainer.strategy.name=deepspeed runs on CUDA GPUs only (Lightning's DeepSpeedStrategy), "
                         f"but {where}; on CPU use trainer=ddp_cpu")


def readable_zero_checkpoint(path: str | Path) -> Path:
    """`path`, or the `.old` copy an interrupted save left beside it."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    return old if not is_zero_checkpoint(path) and is_zero_checkpoint(old) else path


def replace_folder(new: Path, path: Path) -> None:
    """Put folder `new` at `path`; until the second rename the previous one survives as `<path>.old`."""
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


class FolderDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeedStrategy whose saves replace the old checkpoint atomically and whose loads accept
    checkpoints without the frozen weights."""

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        self.barrier()
        super().save_checkpoint(checkpoint, tmp, storage_options)  # every rank writes its shard
        self.barrier()
        if self.is_global_zero:
            replace_folder(tmp, path)
        self.barrier()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        folder = readable_zero_checkpoint(checkpoint_path)
        if not is_zero_checkpoint(folder):
            raise ValueError(f"{checkpoint_path} is not a DeepSpeed checkpoint (no `{LATEST}` file): resume it "
                             "with the trainer that wrote it")
        module = self.lightning_module
        strict = module.strict_loading
        # The shards hold no frozen weights (exclude_frozen_parameters); those were built from the config.
        module.strict_loading = strict and not self.exclude_frozen_parameters
        try:
            return super().load_checkpoint(folder, weights_only)
        finally:
            module.strict_loading = strict


def consolidated_weights(checkpoint: str | Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tensors `names` (LightningModule state-dict names, e.g. `model.projectors.image.0.weight`)
    gathered in fp32 from a ZeRO-2 or ZeRO-3 checkpoint's shards by DeepSpeed's own zero_to_fp32."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError(f"{checkpoint} is a DeepSpeed checkpoint; reading it needs the `deepspeed` package ({INSTALL})")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = readable_zero_checkpoint(checkpoint)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints
        gathered = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), exclude_frozen_parameters=True)
    weights = {k.removeprefix(WRAPPER_PREFIX): v for k, v in gathered.items()}
    names = list(names)
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"DeepSpeed checkpoint {checkpoint} has no tensor {missing[0]!r} "
                         f"({len(missing)} of {len(names)} trained tensors missing)")
    return {n: weights[n].detach().float().contiguous().cpu() for n in names}


def write_consolidated_weights(checkpoint: str | Path, names: Iterable[str]) -> Path:
    """`checkpoint/weights.safetensors` from the ZeRO shards beside it (written to a temporary file first)."""
    checkpoint = readable_zero_checkpoint(checkpoint)
    target, tmp = checkpoint / WEIGHTS, checkpoint / f"{WEIGHTS}.tmp"
    save_file(consolidated_weights(checkpoint, names), str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def model_after_training(trainer: Any, module: Any, model: Any, run_dir: Path) -> Any:
    """The trained model to export and evaluate: `model` itself, or under DeepSpeed (whose ZeRO-3 ranks
    hold only shards) the model rebuilt on rank 0 from the final checkpoint's consolidated weights."""
    if not isinstance(trainer.strategy, DeepSpeedStrategy) or not trainer.is_global_zero:
        return model
    from lamm.training.export import load_for_inference

    write_consolidated_weights(Path(run_dir) / "checkpoints" / "last.ckpt", module.state_dict().keys())
    return load_for_inference(run_dir)[0].to(trainer.strategy.root_device)  # held-out evaluation runs on it
