"""The repo's `datasets/` folder installs as lamm.datasets and never hides Hugging Face's `datasets`."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _outside_repo(origin: str | None) -> bool:
    return origin is None or not Path(origin).resolve().is_relative_to(REPO)


def test_tests_see_hf_datasets_or_none() -> None:
    spec = importlib.util.find_spec("datasets")
    assert spec is None or _outside_repo(spec.origin), spec.origin


def test_cli_from_repo_root_sees_hf_datasets_or_none() -> None:
    lamm = Path(sys.executable).parent / "lamm"
    out = subprocess.run([str(lamm), "env"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    line = next(line for line in out.splitlines() if line.startswith("datasets"))
    origin = line.split(None, 1)[1]
    assert origin == "(not installed)" or _outside_repo(origin), line


def test_top_level_folders_install_inside_lamm() -> None:
    import lamm.benchmarks
    import lamm.conf
    import lamm.datasets
    import lamm.encoders
    import lamm.projectors

    for module, folder in [(lamm.datasets, "datasets"), (lamm.encoders, "encoders"), (lamm.projectors, "projectors"),
                           (lamm.benchmarks, "benchmarks"), (lamm.conf, "conf")]:
        assert Path(module.__file__).parent == REPO / folder


def test_every_subpackage_is_listed_in_pyproject() -> None:
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {"lamm": "lamm", "encoders": "lamm.encoders", "projectors": "lamm.projectors",
             "datasets": "lamm.datasets", "benchmarks": "lamm.benchmarks"}
    for folder, dotted in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            assert ".".join((dotted, *rel)) in listed, f"{init.parent} is not in pyproject's packages"
