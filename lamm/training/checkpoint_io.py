"""Checkpoints as folders: trainable weights in safetensors, the rest in a weights-only torch file.

`step=000100.ckpt/` holds `weights.safetensors` (the LightningModule's state dict: trainable
parameters only) and `state.pt` (optimizer, scheduler, loop counters, data position, RNG), which
loads with `torch.load(weights_only=True)` — never an unrestricted unpickle. Writes go to a
temporary folder that replaces the old one by rename, so a kill mid-save never leaves a corrupt
checkpoint: at worst the previous version survives as `<name>.old`, which loading falls back to.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from safetensors.torch import load_file, save_file

WEIGHTS = "weights.safetensors"
STATE = "state.pt"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write atomically: tmp folder -> rename over the old folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = dict(checkpoint)
    weights = {k: v.detach().contiguous().cpu() for k, v in state.pop("state_dict", {}).items()}
    save_file(weights, str(tmp / WEIGHTS))
    with open(tmp / STATE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """The readable folder for `path` (falls back to the `.old` copy an interrupted save left)."""
    path = Path(path)
    if (path / STATE).exists() and (path / WEIGHTS).exists():
        return path
    old = path.with_name(path.name + ".old")
    if (old / STATE).exists() and (old / WEIGHTS).exists():
        return old
    raise FileNotFoundError(f"no complete checkpoint at {path} (expected {WEIGHTS} and {STATE} inside)")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    folder = resolve_checkpoint(path)
    state = torch.load(folder / STATE, map_location=map_location, weights_only=True)
    state["state_dict"] = load_file(str(folder / WEIGHTS), device=str(map_location or "cpu"))
    return state


class FolderCheckpointIO(CheckpointIO):
    """Lightning CheckpointIO plugin writing and reading the folder format above."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        write_checkpoint(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        shutil.rmtree(path, ignore_errors=True)
