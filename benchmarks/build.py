"""Build the four parts of a recipe from config nodes that name registry entries."""
from __future__ import annotations

from typing import Any

from lamm.components import build_component
from lamm.plain_config import to_plain
from lamm.registry import INFERENCERS, INSTRUCTIONS, METRICS, SCENARIOS


def build_scenario(cfg: Any, key: str = "benchmark.scenario") -> Any:
    """The Scenario a config node names."""
    return build_component(SCENARIOS, cfg, key)


def build_instruction(cfg: Any, key: str = "benchmark.instruction") -> Any:
    """The Instruction a config node names (default: standard)."""
    return build_component(INSTRUCTIONS, cfg or {"name": "standard"}, key)


def build_inferencer(cfg: Any, key: str = "benchmark.inferencer") -> Any:
    """The Inferencer a config node names (default: direct)."""
    return build_component(INFERENCERS, cfg or {"name": "direct"}, key)


def build_metrics(cfg: Any, key: str = "benchmark.metrics") -> list[Any]:
    """The Metrics a list of config nodes names (at least one)."""
    items = to_plain(cfg) if cfg is not None else []
    if isinstance(items, (str, dict)):
        items = [items]
    if not items:
        raise ValueError(f"{key}: empty; name at least one metric (e.g. [accuracy])")
    return [build_component(METRICS, m, f"{key}[{i}]") for i, m in enumerate(items)]
