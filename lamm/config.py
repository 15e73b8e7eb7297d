"""Compose the shipped Hydra configs from Python, and where config groups live.

Configs come from three places, searched in this order by both `compose` and the Hydra apps:
the shipped `lamm.conf`, the `conf/` package of every `lamm.plugins` entry point (see
`plugin_config_modules`), and any `--config-dir` the user passes.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "lamm.conf"


@lru_cache(maxsize=1)
def cpu_bf16_is_fast() -> bool:
    """True on a CPU with AMX tiles or AVX512-BF16 dot products, where bf16 matrix multiplies beat fp32
    (elsewhere bf16 is emulated and slower; figures in docs/results.md, "bf16 on CPU")."""
    import torch

    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def cpu_bf16(fast: Any, slow: Any) -> Any:
    """The `${cpu_bf16:A,B}` resolver: A on a CPU with fast bf16, else B (`precision: ${cpu_bf16:bf16-mixed,32-true}`)."""
    return fast if cpu_bf16_is_fast() else slow


def register_resolvers() -> None:
    """Register lamm's OmegaConf resolvers (`cpu_bf16`); idempotent. `compose` and every Hydra entry
    point call it before a config is read, so importing lamm changes no global state."""
    if not OmegaConf.has_resolver("cpu_bf16"):
        OmegaConf.register_new_resolver("cpu_bf16", cpu_bf16)


def config_dir() -> Path:
    """The folder holding the shipped configs (inside the installed package)."""
    import lamm.conf

    return Path(lamm.conf.__file__).parent


@lru_cache(maxsize=None)
def plugin_config_modules() -> tuple[str, ...]:
    """`<package>.conf` of every `lamm.plugins` entry point whose package ships one (found without importing it)."""
    from lamm.registry import PLUGIN_GROUP

    found = []
    for ep in entry_points(group=PLUGIN_GROUP):
        top = ep.value.split(":", 1)[0].split(".", 1)[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        locations = list(spec.submodule_search_locations or []) if spec else []
        if any((Path(loc) / "conf").is_dir() for loc in locations) and f"{top}.conf" not in found:
            found.append(f"{top}.conf")
    return tuple(found)


def _module_dir(module: str) -> Path | None:
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc, *rest.split(".")) if rest else Path(loc)
        if path.is_dir():
            return path
    return None


def config_search_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Every folder configs are looked up in: shipped, plug-ins, then `extra` (e.g. `--config-dir`)."""
    dirs = [config_dir()]
    dirs += [d for d in map(_module_dir, plugin_config_modules()) if d is not None]
    dirs += [Path(e) for e in extra]
    return dirs


def is_config_group(name: str, extra: Sequence[str | Path] = ()) -> bool:
    """True if `name` (e.g. `model/encoder`, `experiment`) is a config group in any search folder."""
    return any((d / name).is_dir() for d in config_search_dirs(extra))


def compose(config_name: str = "train", overrides: Sequence[str] = (),
            config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """The resolved config `config_name` with command-line style overrides applied.

    `config_dirs` are searched like `--config-dir`; plug-in config folders join through lamm's Hydra
    search-path plug-in, exactly as in the console scripts.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    extra = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in config_dirs)}]"] \
        if config_dirs else []
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides) + extra)


def group_options(group: str, extra: Sequence[str | Path] = ()) -> list[str]:
    """The option names available for a config group, e.g. `model/encoder` (shipped, plug-ins, extra)."""
    return sorted({p.stem for d in config_search_dirs(extra) for p in (d / group).glob("*.yaml")})
