"""The contract of a checkpoint-format importer: what it hands back for `import_checkpoint` to write."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

OUT = "{out}"  # in an override value: the imported run folder (absolute, quoted when written)


@dataclass
class ImportPlan:
    """How to rebuild a published model as a lamm run folder.

    - `overrides`: lamm-train Hydra overrides that rebuild the architecture (`model/encoder=hf_vision`,
      `model.encoder.path={out}/vision`, ...); `lamm-train init_from=OUT` reuses them.
    - `weights`: tensors named as in `build_model(cfg.model).state_dict()`, saved to `weights.safetensors`.
    - `write_folders(staging)`: writes the big parts as HF folders (`llm/`, `vision/`) inside the staging
      folder, streaming tensors; None when there are none.
    - `notes`: recorded in `import.json` (what the source held, choices the importer made).

    An importer is `@CHECKPOINT_FORMATS.register(NAME) def f(src: Path, **options: str) -> ImportPlan`.
    """

    overrides: list[str]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    write_folders: Callable[[Path], None] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def parse_options(items: list[str] | None) -> dict[str, str]:
    """`--option key=value` pairs of the command line as a dict (one line for a malformed pair)."""
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = value
    return options


def quote_value(value: str) -> str:
    """`value` as a Hydra override value that stays one string whatever it contains (paths with spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resolve_overrides(overrides: list[str], out: Path) -> list[str]:
    """The overrides with `{out}` replaced by `out`, quoted."""
    resolved = []
    for item in overrides:
        if OUT in item:
            key, _, value = item.partition("=")
            item = f"{key}={quote_value(value.replace(OUT, str(out)))}"
        resolved.append(item)
    return resolved
