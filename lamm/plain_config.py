"""Config nodes as plain Python values: the one conversion from OmegaConf every module uses."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What a mandatory value nobody gave (`???` in YAML) looks like in a plain config.
MISSING = "???"


def to_plain(cfg: Any) -> Any:
    """OmegaConf nodes as plain dicts and lists (interpolations resolved, `???` kept), recursively;
    mappings become new dicts, so callers may change the result; other values are returned as they are."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [to_plain(v) for v in cfg]
    if isinstance(cfg, tuple):
        return tuple(to_plain(v) for v in cfg)
    return cfg
