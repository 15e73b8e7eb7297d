"""Build the four parts of a recipe from config nodes that name registry entries."""
from __future__ import annotations

from typing import Any

from lamm.build import _plain, build_component
from lamm.registry import INFERENCERS, INSTRUCTIONS, METRICS, SCENARIOS


def to_plain(cfg: Any) -> Any:
    """OmegaConf nodes (dict or list) as plain containers, interpolations resolved; others as they are."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _named(cfg: Any, key: str) -> dict:
    if isinstance(cfg, str):  # `metrics: [accuracy, ece]` is shorthand for [{name: accuracy}, ...]
        return {"name": cfg}
    plain = _plain(cfg)
    if not isinstance(plain, dict):
        raise ValueError(f"{key}: expected a mapping with a `name`, found {type(cfg).__name__}")
    return plain


def build_scenario(cfg: Any, key: str = "benchmark.scenario") -> Any:
    """The Scenario a config node names."""
    return build_component(SCENARIOS, _named(cfg, key), key)


def build_instruction(cfg: Any, key: str = "benchmark.instruction") -> Any:
    """The Instruction a config node names (default: standard)."""
    return build_component(INSTRUCTIONS, _named(cfg or {"name": "standard"}, key), key)


def build_inferencer(cfg: Any, key: str = "benchmark.inferencer") -> Any:
    """The Inferencer a config node names (default: direct)."""
    return build_component(INFERENCERS, _named(cfg or {"name": "direct"}, key), key)


def build_metrics(cfg: Any, key: str = "benchmark.metrics") -> list[Any]:
    """The Metrics a list of config nodes names (at least one)."""
    items = to_plain(cfg) if cfg is not None else []
    if isinstance(items, (str, dict)):
        items = [items]
    if not items:
        raise ValueError(f"{key}: empty; name at least one metric (e.g. [accuracy])")
    return [build_component(METRICS, _named(m, f"{key}[{i}]"), f"{key}[{i}]") for i, m in enumerate(items)]
