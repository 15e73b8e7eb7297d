"""One `Registry` class for every component kind, plus the `lamm.plugins` entry-point loader.

Components register by name (`@ENCODERS.register("open_clip")`) and configs refer to them by
that name only, so a shared YAML can never point at an arbitrary import path.
"""
from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator, TypeVar

from lamm.suggest import did_you_mean

log = logging.getLogger(__name__)

T = TypeVar("T")

PLUGIN_GROUP = "lamm.plugins"

# Built-in modules that register components of each kind; imported on first lookup so that
# `lamm --help` stays instant and heavy libraries load only when used.
_BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    "encoder": ("lamm.encoders",),
    "projector": ("lamm.projectors",),
    "fusion": ("lamm.fusion",),
    "llm": ("lamm.llm",),
    "dataset": ("lamm.datasets.formats", "lamm.datasets.mixture"),
    "scenario": ("lamm.benchmarks",),
    "instruction": ("lamm.benchmarks",),
    "inferencer": ("lamm.benchmarks",),
    "metric": ("lamm.benchmarks",),
    "checkpoint format": ("lamm.zoo.formats",),
    "export format": ("lamm.zoo.formats",),
}

_plugins_loaded = False
# Top-level module of each `lamm.plugins` entry point -> its distribution name, for `Registry.origin`.
_plugin_packages: dict[str, str] = {}


class UnknownComponentError(KeyError):
    """Raised for a registry name that nobody registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


def load_plugins() -> None:
    """Import every `lamm.plugins` entry point once; a broken plug-in is reported, not fatal."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=PLUGIN_GROUP):
        top = ep.value.split(":", 1)[0].split(".", 1)[0]
        _plugin_packages[top] = getattr(getattr(ep, "dist", None), "name", None) or top
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as exc:  # a bad third-party package must not break lamm itself
            log.warning("lamm plug-in %r (%s) failed to load: %s", ep.name, ep.value, exc)


class Registry:
    """A name -> factory table for one component kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._builtins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class or factory under `name`."""

        def decorator(obj: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by "
                    f"{existing.__module__}.{getattr(existing, '__qualname__', existing)}"
                )
            self._entries[name] = obj  # type: ignore[assignment]
            return obj

        return decorator

    def _ensure_loaded(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in _BUILTIN_MODULES.get(self.kind, ()):
                importlib.import_module(module)
        load_plugins()

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as `name`, or an error listing known names and a suggestion."""
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        known = sorted(self._entries)
        raise UnknownComponentError(f"unknown {self.kind} {name!r}.{did_you_mean(name, known)} "
                                    f"Known {self.kind}s: {', '.join(known) or '(none)'}")

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Look up `name` and call its factory."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._ensure_loaded()
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        """Where `name` comes from: "lamm" (built in), a plug-in's distribution, or the registering module's package."""
        top = (getattr(self.get(name), "__module__", None) or "").split(".", 1)[0]
        return "lamm" if top == "lamm" else _plugin_packages.get(top, top)

    def labelled_names(self) -> list[str]:
        """`names()`, each one not built in suffixed with its origin, e.g. `my_encoder (lamm-plugin-encoder)`."""
        return [name if self.origin(name) == "lamm" else f"{name} ({self.origin(name)})" for name in self.names()]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


ENCODERS = Registry("encoder")
PROJECTORS = Registry("projector")
FUSIONS = Registry("fusion")
LLMS = Registry("llm")
DATASETS = Registry("dataset")
SCENARIOS = Registry("scenario")
INSTRUCTIONS = Registry("instruction")
INFERENCERS = Registry("inferencer")
METRICS = Registry("metric")
CHECKPOINT_FORMATS = Registry("checkpoint format")  # `lamm import FORMAT SRC OUT` (lamm/zoo/)
EXPORT_FORMATS = Registry("export format")  # `lamm export --to FORMAT RUN OUT` (lamm/zoo/)

ALL_REGISTRIES: dict[str, Registry] = {
    r.kind: r
    for r in (ENCODERS, PROJECTORS, FUSIONS, LLMS, DATASETS, SCENARIOS, INSTRUCTIONS, INFERENCERS, METRICS,
              CHECKPOINT_FORMATS, EXPORT_FORMATS)
}
