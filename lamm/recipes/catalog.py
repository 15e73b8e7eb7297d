"""The recipes lamm can run: `experiment/*.yaml` (lamm-train) and `benchmark/*.yaml` (lamm-eval) in every
config folder (shipped, plug-ins, `--config-dir`), to list, show and copy."""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lamm.config import config_search_dirs
from lamm.suggest import did_you_mean

KINDS = ("experiment", "benchmark")
# Which CLI runs each kind, and with which config group.
RUNNERS = {"experiment": "lamm-train", "benchmark": "lamm-eval"}


@dataclass(frozen=True)
class RecipeFile:
    """One recipe (a YAML file): `experiment` or `benchmark`, its option name and where it lives."""

    kind: str
    name: str
    path: Path

    @property
    def description(self) -> str:
        """The first comment line, the recipe's own one-line summary."""
        return describe(self.path.read_text(encoding="utf-8"))


def describe(text: str) -> str:
    """The first sentence of a YAML text's leading comment (its one-line summary; `# @package` skipped).

    Comments wrap lines mid-sentence, so the first line alone is often a fragment; indented comment
    lines (usage examples) end the summary.
    """
    words: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#") or stripped.startswith(("#  ", "# @package")):
            if words or not stripped.startswith("# @package"):
                break
            continue
        words.append(stripped.lstrip("#").strip())
    summary = " ".join(w for w in words if w)
    return re.split(r"(?<=[.!?])\s", summary, maxsplit=1)[0]


def list_recipes(extra_dirs: Sequence[str | Path] = (), kind: str | None = None) -> list[RecipeFile]:
    """Every recipe, in Hydra's search order (an option shadowed by an earlier folder is left out)."""
    found: dict[tuple[str, str], RecipeFile] = {}
    for k in KINDS if kind is None else (kind,):
        for folder in config_search_dirs(extra_dirs):
            for path in sorted((folder / k).rglob("*.yaml")):
                name = path.relative_to(folder / k).with_suffix("").as_posix()
                found.setdefault((k, name), RecipeFile(k, name, path))
    return list(found.values())


def find_recipe(name: str, extra_dirs: Sequence[str | Path] = (), kind: str | None = None) -> RecipeFile:
    """The recipe called `name` (or `experiment/NAME`, `benchmark/NAME`); a clear error otherwise."""
    if kind is None and name.split("/", 1)[0] in KINDS and "/" in name:
        kind, name = name.split("/", 1)
    name = name.removesuffix(".yaml")
    recipes = list_recipes(extra_dirs, kind)
    matches = [r for r in recipes if r.name == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"recipe {name!r} is both an experiment and a benchmark; say experiment/{name} "
                         f"or benchmark/{name}")
    names = sorted({r.name for r in recipes})
    raise ValueError(f"unknown recipe {name!r}.{did_you_mean(name, names)} Known: {', '.join(names)} "
                     "(see `lamm recipes list`)")


def copy_recipe(name: str, dest: str | Path, extra_dirs: Sequence[str | Path] = ()) -> Path:
    """Copy a recipe to `dest` (a .yaml file, or a folder to hold NAME.yaml); never overwrites a file."""
    recipe = find_recipe(name, extra_dirs)
    dest = Path(dest)
    if dest.is_dir() or dest.suffix not in (".yaml", ".yml"):  # Hydra only loads .yaml: anything else is a folder
        dest = dest / recipe.path.name
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; not overwritten (choose another name or remove it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_new_file(dest, recipe.path.read_bytes())
    return dest


def write_new_file(dest: Path, data: bytes) -> None:
    """Write `dest` atomically and only if it does not exist (a full temp file, then a no-clobber link)."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, dest)  # fails if dest appeared meanwhile: nothing of the user's is ever replaced
        except FileExistsError:
            raise FileExistsError(f"{dest} already exists; not overwritten (choose another name or remove it)") \
                from None
    finally:
        os.unlink(tmp)
