"""A recipe's `required:` keys: values a user must give on the command line, each with what to give.

    required:
      init_from: the stage-1 run folder (or a checkpoint inside it)

`init_from: ???` in a recipe cannot say this: merged over train.yaml's `init_from: null`, OmegaConf keeps
the null, so the run would silently start from nothing. A mapping (not a list) lets a recipe that builds
on another add requirements, or drop one with `KEY: null`.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def unmet_requirements(cfg: DictConfig) -> list[tuple[str, str]]:
    """(key, what to give) for each required key that is null, empty or `???` in the composed config."""
    required = cfg.get("required") or {}
    # `select` gives None for an absent key and for a `???` value alike.
    return [(str(key), str(hint)) for key, hint in required.items()
            if hint is not None and OmegaConf.select(cfg, str(key), default=None) in (None, "")]


def requirement_problem(cfg: DictConfig) -> str | None:
    """One line naming every unmet required key and what to give for it, or None."""
    unmet = unmet_requirements(cfg)
    if not unmet:
        return None
    wanted = "; ".join(f"{key}=<{hint}>" for key, hint in unmet)
    keys = ", ".join(key for key, _ in unmet)
    return f"this recipe requires {keys}: add {wanted} to the command line"
