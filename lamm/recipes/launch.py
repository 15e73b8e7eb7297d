"""What lamm-train and lamm-eval do with recipes before Hydra sees the command line.

- `--trust-recipe` is taken out of the arguments (Hydra does not know it); without it, every recipe
  file the composition could load is scanned by `lamm.recipes.safety` and a refused one stops the
  command. Trust is passed on to the processes a run launches (DDP ranks re-run the command line)
  through the environment variable LAMM_TRUST_RECIPE=1, which a user may also set.
- A recipe given as a file, `experiment=path/to/mine.yaml` or just `path/to/mine.yaml` (benchmark=
  for lamm-eval), is copied into a private config folder added to `hydra.searchpath`, and the
  argument becomes `experiment=mine`. A file inside a config folder (`DIR/experiment/mine.yaml`)
  also brings DIR onto the search path, so its own groups resolve.
- A `--config-dir` option hidden by a shipped option of the same name is an error: Hydra searches
  the shipped configs first, so the user's edited copy would silently not run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from lamm.config import config_search_dirs
from lamm.recipes.safety import Problem, require_safe, scan_dir, scan_file
from lamm.recipes.staging import is_recipe_path, stage_file, staging_folder

TRUST_FLAG = "--trust-recipe"
TRUST_ENV = "LAMM_TRUST_RECIPE"
# Hydra's own options that take a value (the value is not an override or a recipe path).
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
_SEARCHPATH = "hydra.searchpath="


def _flag_values(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
    return values


def _searchpath_entries(argv: Sequence[str]) -> list[str]:
    for arg in argv:
        if arg.startswith(_SEARCHPATH):
            body = arg[len(_SEARCHPATH):].strip().removeprefix("[").removesuffix("]")
            return [e.strip().strip("'\"") for e in body.split(",") if e.strip()]
    return []


def user_config_dirs(argv: Sequence[str]) -> list[Path]:
    """Config folders the command line adds: `--config-dir`, and `file://` entries of hydra.searchpath."""
    dirs = [Path(v) for v in _flag_values(argv, ("--config-dir", "-cd"))]
    dirs += [Path(e.removeprefix("file://")) for e in _searchpath_entries(argv) if e.startswith("file://")]
    return [d.resolve() for d in dirs]


def _primary_config_dirs(argv: Sequence[str]) -> list[Path]:
    """`--config-path` folders given on the disk (they replace lamm's primary config folder)."""
    return [Path(v).resolve() for v in _flag_values(argv, ("--config-path", "-cp"))
            if not v.startswith("pkg://") and Path(v).is_dir()]


def _with_searchpath(argv: list[str], folders: list[Path], at: int) -> list[str]:
    """`folders` added to hydra.searchpath: the existing override is extended, or one is put at `at`
    (next to the other overrides: Hydra's parser wants them together, not split by `--cfg job`)."""
    entries = _searchpath_entries(argv) + [f"file://{f}" for f in folders]
    override = _SEARCHPATH + "[" + ",".join(f"'{e}'" for e in entries) + "]"
    existing = [i for i, a in enumerate(argv) if a.startswith(_SEARCHPATH)]
    if existing:
        return [override if i == existing[0] else a for i, a in enumerate(argv)]
    return [*argv[:at], override, *argv[at:]]


def _choices(argv: Sequence[str], group: str) -> list[tuple[int, str]]:
    """(argument index, value) of each `group=value` (also `+group=`), or a bare recipe path."""
    found, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in _VALUE_FLAGS:
            skip = True
            continue
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+") == group:
            found.append((i, value))
        elif not eq and not arg.startswith("-") and is_recipe_path(arg):
            found.append((i, arg))
    return found


def stage_recipe_files(argv: list[str], group: str) -> list[str]:
    """The command line with each recipe file turned into an option of a private config folder."""
    extra = user_config_dirs(argv)
    folder: Path | None = None
    siblings: list[Path] = []
    out, at = list(argv), 0
    for index, value in _choices(argv, group):
        if not any(is_recipe_path(v) for v in value.split(",")):
            continue
        names = []
        for v in value.split(","):  # a sweep may list several files
            if not is_recipe_path(v):
                names.append(v)
                continue
            folder = folder or staging_folder()
            path = Path(v).expanduser()
            if path.parent.name == group and not extra and path.parent.parent.resolve() not in siblings:
                siblings.append(path.parent.parent.resolve())
            names.append(stage_file(path, group, folder, [*extra, *siblings]))
        out[index], at = f"{group}={','.join(names)}", index + 1
    if folder is None:
        return out
    return _with_searchpath(out, [*siblings, folder], at)


def check_recipes(argv: Sequence[str], group: str) -> None:
    """Raise UnsafeRecipeError naming each refused file and line among those the command could load."""
    user_dirs = [*user_config_dirs(argv), *_primary_config_dirs(argv)]
    problems: list[Problem] = []
    for folder in user_dirs:  # any file there can be pulled in by a defaults list
        problems += [_with_origin(p) for p in scan_dir(folder)]
    for _, value in _choices(argv, group):
        for name in value.split(","):
            holders = _holders(name, group, user_dirs)
            if holders and holders[0] not in user_dirs:  # shipped or plug-in: scanned for the record
                problems += scan_file(holders[0] / group / f"{name}.yaml", is_global=False)
    require_safe(problems)


def _holders(name: str, group: str, user_dirs: Sequence[Path]) -> list[Path]:
    """The config folders holding option `name` of `group`, in Hydra's search order."""
    if name in ("", "null"):
        return []
    return [d for d in config_search_dirs(user_dirs) if (d / group / f"{name}.yaml").is_file()]


def check_not_hidden(argv: Sequence[str], group: str) -> None:
    """A ValueError when the user's option is hidden by a shipped one of the same name."""
    user_dirs = user_config_dirs(argv)
    for _, value in _choices(argv, group):
        for name in value.split(","):
            holders = _holders(name, group, user_dirs)
            if holders and holders[0] not in user_dirs and any(d in user_dirs for d in holders):
                mine = next(d for d in holders if d in user_dirs) / group / f"{name}.yaml"
                raise ValueError(f"{mine} is hidden by the shipped {group} {name!r} (Hydra searches shipped "
                                 f"configs first); rename your file")


def _with_origin(problem: Problem) -> Problem:
    """Name the file the user gave, not its staged copy."""
    from lamm.recipes.hashing import STAGED_ORIGINS

    origin = STAGED_ORIGINS.get(Path(problem.path).resolve())
    return Problem(origin, problem.line, problem.key, problem.message) if origin else problem


def prepare_argv(argv: Sequence[str], group: str) -> list[str]:
    """The command line Hydra should see: recipe files staged, trust flag removed, recipes checked."""
    trusted = TRUST_FLAG in argv or os.environ.get(TRUST_ENV) == "1"
    out = stage_recipe_files([a for a in argv if a != TRUST_FLAG], group)
    check_not_hidden(out, group)
    if trusted:
        os.environ[TRUST_ENV] = "1"  # DDP ranks and other child runs inherit the user's decision
    else:
        check_recipes(out, group)
    return out
