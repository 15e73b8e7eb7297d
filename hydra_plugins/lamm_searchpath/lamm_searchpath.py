"""Put the `conf/` folder of every `lamm.plugins` package on Hydra's search path.

Hydra imports this module while it scans `hydra_plugins` (in every Hydra app of the environment),
so it stays light and acts only on apps whose primary configs are lamm's: `lamm-train`,
`lamm-eval` and `lamm.config.compose`. A plug-in package's YAML then joins lamm's groups, e.g.
`lamm-train model/encoder=my_encoder`, after `pip install` and with no edit to lamm.
"""
from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

LAMM_CONFIGS = "pkg://lamm.conf"


class LammPluginSearchPath(SearchPathPlugin):
    """Appends `pkg://<package>.conf` for each `lamm.plugins` entry point that ships configs."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Add plug-in config packages after lamm's own (so a plug-in cannot shadow a shipped option)."""
        if not any(element.path == LAMM_CONFIGS for element in search_path.get_path()):
            return
        from lamm.config import plugin_config_modules

        for module in plugin_config_modules():
            search_path.append(provider="lamm-plugin", path=f"pkg://{module}")
