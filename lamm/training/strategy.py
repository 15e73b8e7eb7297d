"""`trainer.strategy` from config: a Lightning strategy name passes through as it is; a mapping with a
`name` builds that strategy object with the other keys as its arguments, e.g.

    strategy: {name: deepspeed, stage: 3, offload_optimizer: false}

Builders are a table by name, so a new strategy with options is one entry here.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from lamm.plain_config import to_plain
from lamm.suggest import did_you_mean


def _deepspeed(accelerator: str | None, options: dict[str, Any]):
    from lamm.training.deepspeed_zero import check_cuda, deepspeed_strategy

    strategy = deepspeed_strategy(options)
    check_cuda(accelerator)
    return strategy


# name -> builder(accelerator from trainer.accelerator, the mapping's other keys) -> a Lightning Strategy
STRATEGIES: dict[str, Callable[[str | None, dict[str, Any]], Any]] = {"deepspeed": _deepspeed}


def check_options(strategy_class: type, options: dict[str, Any], name: str) -> None:
    """One line (ValueError) for a key the strategy's constructor does not take, with the closest one."""
    accepted = [p for p in inspect.signature(strategy_class.__init__).parameters if p not in ("self", "kwargs")]
    for key in options:
        if key not in accepted:
            raise ValueError(f"unknown key 'trainer.strategy.{key}': {strategy_class.__name__} (strategy {name}) "
                             f"has no argument {key!r}."
                             + did_you_mean(f"trainer.strategy.{key}", [f"trainer.strategy.{a}" for a in accepted]))


def strategy_from_config(strategy: Any, accelerator: str | None = None) -> Any:
    """The `Trainer(strategy=...)` value for the config's `trainer.strategy` (ValueError, one line, when
    the mapping names no known strategy, has an unknown key or needs a package that is not installed)."""
    if strategy is None or isinstance(strategy, str):
        return strategy if strategy is not None else "auto"
    options = dict(to_plain(strategy))
    name = options.pop("name", None)
    if name not in STRATEGIES:
        raise ValueError(f"trainer.strategy.name={name!r} is not a strategy lamm builds from options "
                         f"(known: {', '.join(STRATEGIES)}); or set trainer.strategy to a Lightning strategy name"
                         + (did_you_mean(str(name), list(STRATEGIES)) if name else ""))
    return STRATEGIES[name](accelerator, options)
