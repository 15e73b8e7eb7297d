"""Compose the shipped Hydra configs from Python (tests, the `lamm` umbrella command)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

CONFIG_MODULE = "lamm.conf"


def config_dir() -> Path:
    """The folder holding the shipped configs (inside the installed package)."""
    import lamm.conf

    return Path(lamm.conf.__file__).parent


def compose(config_name: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved config `config_name` with command-line style overrides applied."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def group_options(group: str) -> list[str]:
    """The option names shipped for a config group, e.g. `model/encoder`."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
