"""Make a recipe file from anywhere loadable by Hydra: copy it into a config folder of its own.

Hydra loads group options from config folders, so `lamm-train experiment=path/to/mine.yaml` becomes
`experiment=mine` with a private folder holding `experiment/mine.yaml` on the search path. The copy
holds the bytes that were checked and hashed, so what runs is exactly what was validated.
"""
from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from lamm.config import group_options
from lamm.recipes.hashing import STAGED_ORIGINS

RECIPE_SUFFIXES = (".yaml", ".yml")


def is_recipe_path(value: str) -> bool:
    """True for a value naming a YAML file (Hydra option names never carry the extension)."""
    return value.endswith(RECIPE_SUFFIXES)


def staging_folder() -> Path:
    """A fresh folder removed when the process exits (child processes of a run finish first)."""
    folder = Path(tempfile.mkdtemp(prefix="lamm-recipe-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def stage_file(source: str | Path, group: str, folder: Path, extra_dirs: Sequence[str | Path] = ()) -> str:
    """Copy `source` to `folder/group/NAME.yaml`; returns NAME (the file's stem unless that is taken)."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"recipe file not found: {source}")
    data = source.read_bytes()
    name = source.stem
    # An option of the same name in an earlier config folder would win Hydra's lookup and hide this file.
    if name in group_options(group, [*extra_dirs, folder]):
        name = f"{name}-{hashlib.sha256(data).hexdigest()[:8]}"
    target = folder / group / f"{name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    STAGED_ORIGINS[target.resolve()] = source.resolve()
    return name
