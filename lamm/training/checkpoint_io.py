"""Checkpoints as folders: trainable weights in safetensors, the rest in a weights-only torch file.

`step=000100.ckpt/` holds `weights.safetensors` (the LightningModule's state dict: trainable
parameters only) and `state.pt` (optimizer, scheduler, loop counters, data position, RNG), which
loads with `torch.load(weights_only=True)` — never an unrestricted unpickle. Writes go to a
temporary folder that replaces the old one by rename, so a kill mid-save never leaves a corrupt
checkpoint: at worst the previous version survives as `<name>.old`, which loading falls back to.
A failed write (a full disk) removes the temporary folder and raises `CheckpointWriteError`; the
previous checkpoint stays in place. tests/test_faults.py kills real runs at each step of a save
(`LAMM_FAULT_INJECT`, lamm/faults.py).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load_file, save_file

from lamm.faults import kill_self, triggered

WEIGHTS = "weights.safetensors"
STATE = "state.pt"
LATEST = "latest"  # DeepSpeed's file naming the tag folder of a checkpoint
SHARDED_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shard files of a sharded run


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the previous checkpoint is kept."""

    def __str__(self) -> str:
        return f"{self.strerror} ({self.filename})"


class _RememberedErrors:
    """A binary file that remembers its write error: torch's zip writer replaces it by a RuntimeError."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _os_error_of(exc: Exception) -> OSError | None:
    """The operating-system error behind a failed write, if there was one (safetensors names it as text)."""
    if isinstance(exc, OSError):
        return exc
    code = re.search(r"\(os error (\d+)\)", str(exc))
    return OSError(int(code.group(1)), os.strerror(int(code.group(1)))) if code else None


def _write_weights(weights: dict[str, torch.Tensor], file: Path) -> None:
    if triggered("checkpoint.enospc"):  # the test hook: a disk that fills up half way through
        save_file(weights, str(file))
        os.truncate(file, file.stat().st_size // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    save_file(weights, str(file))
    if triggered("checkpoint.weights_partial"):
        os.truncate(file, file.stat().st_size // 2)
        kill_self()
    with open(file, "rb+") as f:
        os.fsync(f.fileno())


def write_state_file(state: dict[str, Any], file: Path) -> None:
    """`state.pt`: everything but the weights, loadable with `torch.load(weights_only=True)`, fsynced."""
    with open(file, "wb") as raw:
        f = _RememberedErrors(raw)
        try:
            torch.save(state, f)
        except RuntimeError as exc:
            raise f.error or exc
        raw.flush()
        os.fsync(raw.fileno())


def _write_folder(checkpoint: dict[str, Any], folder: Path) -> None:
    """The checkpoint's two files in `folder`, on disk (fsynced) when this returns."""
    folder.mkdir()
    state = dict(checkpoint)
    weights = {k: v.detach().contiguous().cpu() for k, v in state.pop("state_dict", {}).items()}
    _write_weights(weights, folder / WEIGHTS)
    write_state_file(state, folder / STATE)
    _fsync_dir(folder)


def write_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write atomically: tmp folder -> rename over the old folder (CheckpointWriteError if it cannot be written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_folder(checkpoint, tmp)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays, and the space comes back
        cause = _os_error_of(exc)
        if cause is None:
            raise
        kept = "the previous checkpoint is kept" if path.exists() or old.exists() else "no earlier checkpoint"
        raise CheckpointWriteError(cause.errno, f"could not save the checkpoint: {cause.strerror or cause}; {kept}",
                                   str(path)) from exc
    commit_folder(tmp, path)


def commit_folder(tmp: Path, path: Path) -> None:
    """Put the complete folder `tmp` in place of `path`: the old one is renamed to `.old` first and
    removed last, so a kill at any point leaves one complete checkpoint."""
    _fsync_dir(tmp)
    old = path.with_name(path.name + ".old")
    if triggered("checkpoint.before_rename"):
        kill_self()
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    if triggered("checkpoint.between_renames"):
        kill_self()
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def is_sharded_checkpoint(folder: Path) -> bool:
    """A checkpoint of a sharded (FSDP) run: torch.distributed.checkpoint shards + `.metadata` beside state.pt."""
    return (folder / SHARDED_METADATA).is_file()


def is_zero_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a DeepSpeed checkpoint folder (its `latest` file names the state's tag;
    written and read by lamm/training/deepspeed_zero.py, recognised here without importing Lightning)."""
    return (Path(path) / LATEST).is_file()


def _complete(folder: Path) -> bool:
    return (folder / STATE).exists() and ((folder / WEIGHTS).exists() or is_sharded_checkpoint(folder))


def resolve_checkpoint(path: str | Path) -> Path:
    """The readable folder for `path` (falls back to the `.old` copy an interrupted save left)."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    for folder in (path, old):
        if _complete(folder) or is_zero_checkpoint(folder):
            return folder
    raise FileNotFoundError(f"no complete checkpoint at {path} (expected {STATE} and {WEIGHTS} or sharded "
                            f"weights ({SHARDED_METADATA}) inside)")


def sharded_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The full (consolidated) tensors of a sharded checkpoint's `state_dict`, read on one process
    without a process group, by LightningModule state-dict name (`model.…`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = resolve_checkpoint(folder)
    reader = dcp.FileSystemReader(str(folder))
    prefix = "state_dict."
    weights = {name.removeprefix(prefix): torch.empty(meta.size, dtype=meta.properties.dtype)
               for name, meta in reader.read_metadata().state_dict_metadata.items()
               if name.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    with warnings.catch_warnings():  # it warns that it reads without a process group, which is the point here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"state_dict": weights}, storage_reader=reader, no_dist=True)
    return weights


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    folder = resolve_checkpoint(path)
    if is_sharded_checkpoint(folder):  # its optimizer state is in the shards, which only FSDP reads back
        raise ValueError(f"{folder} is a sharded (FSDP) checkpoint: resume it with trainer.strategy=fsdp, or start "
                         "from its weights with init_from=")
    if not (folder / STATE).exists():  # DeepSpeed's own layout
        raise ValueError(f"{path} is a DeepSpeed checkpoint: resume it with the trainer that wrote it "
                         "(trainer=deepspeed_zero2 or deepspeed_zero3)")
    state = torch.load(folder / STATE, map_location=map_location, weights_only=True)
    state["state_dict"] = load_file(str(folder / WEIGHTS), device=str(map_location or "cpu"))
    return state
