"""Sweep job folders named by what the sweep varies: `runs/multirun/<time>/0-fusion=prefix`.

Hydra's own `override_dirname` joins every override of a job verbatim, so `model/fusion=prefix` became
two nested folders and a path override a chain of empty ones. The `lamm_sweep_subdir` resolver
(conf/hydra/default.yaml) keeps only the swept keys, shortens a group to its last component and
replaces unsafe characters; the job's full overrides stay in its `.hydra/overrides.yaml` and run.json.
"""
from __future__ import annotations

import hashlib
import re
import sys
from typing import Sequence

RESOLVER = "lamm_sweep_subdir"
MAX_NAME = 120  # characters; longer names end in a hash of the full one
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
_NOT_IN_NAME = frozenset({"resume"})  # resuming a job must not rename its folder


def swept_keys(argv: Sequence[str]) -> set[str]:
    """Keys the command line sweeps (`a=1,2`, `a=range(3)`, `a=glob(*)`), parsed by Hydra's own grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # Hydra reports a malformed override itself
        return set()
    return {o.get_key_element().lstrip("+~") for o in overrides if o.is_sweep_override()}


def safe_part(text: str) -> str:
    """`text` as one path component: unsafe characters (`/`, spaces, `:`, ...) become `_`."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "_"
    if len(cleaned) > MAX_NAME:
        cleaned = f"{cleaned[:MAX_NAME - 9]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return cleaned


def sweep_subdir(job_num: int | str, task_overrides: Sequence[str], argv: Sequence[str] | None = None) -> str:
    """`<num>-<key=value,...>` of the swept keys of one job (every key if the sweep is not known)."""
    swept = swept_keys(sys.argv[1:] if argv is None else argv)
    parts = []
    for item in task_overrides:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key in _NOT_IN_NAME or (swept and key not in swept):
            continue
        parts.append(f"{key.rsplit('/', 1)[-1]}={value}")  # model/fusion -> fusion
    return f"{job_num}-{safe_part(','.join(parts))}" if parts else str(job_num)


def register() -> None:
    """Make `${lamm_sweep_subdir:...}` resolvable (idempotent)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(RESOLVER, lambda num, overrides: sweep_subdir(num, list(overrides)), replace=True)
