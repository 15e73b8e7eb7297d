"""`lamm-train --help` and `lamm-eval --help` without composing a config (Hydra's own help composes the
whole config tree several times, seconds per call): the script's examples, every config group with its
options, and the config file's settings with their comments."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from lamm.config import config_dir, config_search_dirs, group_options

HELP_FLAGS = ("--help", "-h")


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


def config_groups(extra: Sequence[str | Path] = ()) -> list[str]:
    """Every config group (a folder of YAML options, e.g. `model/encoder`) in the search folders."""
    groups = set()
    for root in config_search_dirs(extra):
        for yaml in root.rglob("*.yaml"):
            group = yaml.parent.relative_to(root).as_posix()
            if group != "." and group.split("/")[0] not in ("hydra", "local"):
                groups.add(group)
    return sorted(groups)


def settings_text(config_name: str) -> str:
    """The config file's own lines (comments included) without its `defaults:` list and `hydra:` block."""
    kept, skipping = [], False
    for line in (config_dir() / f"{config_name}.yaml").read_text().splitlines():
        top_level = bool(line) and not line[0].isspace() and not line.startswith("#")
        if top_level:
            skipping = line.startswith(("defaults:", "hydra:"))
        if not skipping:
            kept.append(line)
    return "\n".join(kept).strip("\n")


def print_help(script: str, doc: str, config_name: str, groups: Sequence[str] | None = None,
               extra: Sequence[str | Path] = ()) -> None:
    """The help page: `groups` None lists every group found."""
    chosen = config_groups(extra) if groups is None else list(groups)
    lines = [f"usage: {script} [--config-dir DIR] [--cfg job] [GROUP=OPTION ...] [KEY=VALUE ...]", "",
             (doc or "").strip(), "", "Config groups (GROUP=OPTION):"]
    lines += [f"  {g}: {', '.join(group_options(g, extra))}" for g in chosen]
    lines += ["", f"Settings (KEY=VALUE), from conf/{config_name}.yaml:", settings_text(config_name), "",
              f"{script} --cfg job [overrides] prints the resolved config; --hydra-help lists Hydra's own flags."]
    sys.stdout.write("\n".join(lines) + "\n")
