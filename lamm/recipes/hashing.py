"""The content hash that ties a run or an evaluation report to the exact recipe YAML it came from."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

# Recipe files copied into a staging folder by `lamm.recipes.launch` -> the file the user named, so a
# run records the path the user knows (the bytes, and so the hash, are the same).
STAGED_ORIGINS: dict[Path, Path] = {}


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the recipe as shared, comments and all."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recipe_record(kind: str, name: str, path: str | Path) -> dict[str, Any]:
    """What run.json and results.json hold about a recipe: kind, name, path and sha256."""
    path = Path(path).resolve()
    origin = STAGED_ORIGINS.get(path)
    return {"kind": kind, "name": origin.stem if origin else name, "path": str(origin or path),
            "sha256": sha256_file(path)}


def _source_dir(path: str, schema: str) -> Path | None:
    """The folder a Hydra config source (`pkg` module or `file` folder) reads from."""
    if schema == "file":
        return Path(path)
    if schema == "pkg":
        import importlib.util

        try:
            spec = importlib.util.find_spec(path.replace("/", "."))
        except (ImportError, ValueError):
            return None
        locations = list(spec.submodule_search_locations or []) if spec else []
        return Path(locations[0]) if locations else None
    return None


def current_recipe(group: str) -> dict[str, Any] | None:
    """The record of the `group` option (experiment / benchmark) the running Hydra app composed, if any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    runtime = HydraConfig.get().runtime
    name = runtime.choices.get(group)
    if not name:
        return None
    for source in runtime.config_sources:  # Hydra's search order: the first folder holding the option wins
        folder = _source_dir(source.path, source.schema)
        candidate = folder / group / f"{name}.yaml" if folder else None
        if candidate is not None and candidate.is_file():
            return recipe_record(group, name, candidate)
    return None
