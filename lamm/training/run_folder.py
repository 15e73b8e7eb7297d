"""Run bookkeeping: the resolved config, package versions, git revision, recipe hash; finding runs."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACKAGES = ("lamm", "torch", "torchvision", "lightning", "transformers", "peft", "hydra-core", "omegaconf",
            "open_clip_torch", "timm", "open3d", "safetensors", "tokenizers", "numpy", "deepspeed")
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision(start: Path) -> str | None:
    """The commit of the lamm checkout (with '+dirty' for local changes), if it is a git checkout."""
    try:
        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 of the resolved config as YAML: the same recipe and overrides give the same hash."""
    text = OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_writable(folder: Path) -> None:
    """Fail before any work if the run folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"output folder {folder} is not writable ({exc.strerror or exc})") from None


def write_run_info(folder: Path, cfg: DictConfig, extra: dict[str, Any] | None = None,
                   recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write config.yaml and run.json (versions, git revision, hashes, command line) into the run folder.

    `recipe` (kind, name, path, sha256 of the experiment YAML as shared; see lamm.recipes.hashing)
    ties the run's numbers to the exact recipe file; null when no experiment recipe was used.
    """
    (folder / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "command": sys.argv,
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_revision": git_revision(folder),
        "config_sha256": config_hash(cfg),
        "recipe": recipe,
        **(extra or {}),
    }
    (folder / RUN_FILE).write_text(json.dumps(info, indent=2))
    return info


def find_latest_checkpoint(runs_dir: Path, run_name: str | None = None) -> Path | None:
    """The newest `checkpoints/last.ckpt` under `runs_dir` (optionally only runs named `run_name`)."""
    candidates = []
    for last in Path(runs_dir).glob("**/checkpoints/last.ckpt*"):
        if last.name not in ("last.ckpt", "last.ckpt.old"):
            continue
        run = last.parent.parent
        if run_name is not None and _run_name(run) != run_name:
            continue
        try:  # a live run's save renames and removes these; the lock taken next refuses that run
            mtime = last.stat().st_mtime
        except FileNotFoundError:
            continue
        candidates.append((mtime, last.with_name("last.ckpt")))
    return max(candidates)[1] if candidates else None


def _run_name(run: Path) -> str | None:
    try:
        return OmegaConf.load(run / CONFIG_FILE).get("run_name")
    except (OSError, ValueError):
        return None


LOCK_FILE = ".lock"
_held_locks: dict[Path, int] = {}  # folder -> open lock file: the locks last as long as this process


class RunFolderLockedError(PermissionError):
    """Another live process holds the run folder (training into it, or resuming it)."""

    def __init__(self, message: str, locked_folder: Path) -> None:
        super().__init__(message)
        self.locked_folder = locked_folder


def _first_process() -> bool:
    """True outside the extra processes of a distributed run (they join the first process's run)."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def lock_run_folder(folder: Path) -> None:
    """Hold an exclusive lock on `folder` until this process ends, or raise RunFolderLockedError.

    An OS lock (flock), so a killed process never leaves a stale lock; the lock file records the pid.
    """
    import fcntl

    folder = Path(folder).resolve()
    if folder in _held_locks:  # this process already holds it (train() called again in one session)
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderLockedError(f"run folder {folder} is in use by another lamm-train (pid {holder}); "
                                   "wait for it to finish or stop it", folder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held_locks[folder] = fd


def lock_run(run_dir: Path, resume_from: str | Path | None) -> None:
    """Lock this run's folder and the run it resumes from, so two processes never train the same run."""
    if not _first_process():
        return
    lock_run_folder(run_dir)
    if resume_from is not None:
        ckpt = Path(resume_from)
        source = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        if source.resolve() != Path(run_dir).resolve():
            lock_run_folder(source)
