"""Plug-ins: a pip-installed package adds an encoder and its YAML; docs/write_an_encoder.md's commands run.

The example package is installed with pip into a temporary folder put on PYTHONPATH, so its entry
point is discovered by the subprocesses and .venv is never modified.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "plugin_encoder"
DOC = REPO / "docs" / "write_an_encoder.md"

INSTALL = ".venv/bin/pip install examples/plugin_encoder"
REGISTRY = ".venv/bin/lamm registry encoder"
SHOW_CONFIG = ".venv/bin/lamm-train model/encoder=my_encoder --cfg job"
TRAIN = ".venv/bin/lamm-train model/encoder=my_encoder debug=fast"
PLUGIN_TESTS = ".venv/bin/pytest -q examples/plugin_encoder/tests"
COMMANDS = {INSTALL, REGISTRY, SHOW_CONFIG, TRAIN, PLUGIN_TESTS}  # every one is run below


@dataclass
class Sandbox:
    root: Path  # holds a copy of examples/plugin_encoder, so builds and runs never touch the repo
    env: dict[str, str]  # PYTHONPATH = the folder pip installed the example into


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1"}


def run(command: str, cwd: Path, env: dict[str, str], *extra: str, check: bool = True,
        timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a documented `.venv/bin/...` command with this interpreter's venv."""
    argv = shlex.split(command)
    argv[0] = str(BIN / argv[0].removeprefix(".venv/bin/"))
    result = subprocess.run([*argv, *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def fenced_blocks(markdown: Path, language: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", markdown.read_text(), flags=re.S | re.M)
    return [body for lang, body in blocks if language is None or lang == language]


def bash_commands(markdown: Path) -> set[str]:
    return {line.strip() for block in fenced_blocks(markdown, "bash") for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, root / "examples" / "plugin_encoder",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = root / "site"
    # The documented install, into a folder instead of .venv; .venv already has every dependency.
    run(INSTALL, root, base_env(), "--no-deps", "--no-build-isolation", "--quiet", "--target", str(site))
    return Sandbox(root, {**base_env(), "PYTHONPATH": str(site)})


def test_the_docs_commands_and_excerpts_are_the_tested_ones() -> None:
    assert bash_commands(DOC) == COMMANDS
    assert bash_commands(EXAMPLE / "README.md") <= COMMANDS
    excerpts = [b for b in fenced_blocks(DOC) if b.startswith("# file: ")]
    assert len(excerpts) == 4
    for block in excerpts:
        header, _, body = block.partition("\n")
        source = (REPO / header.removeprefix("# file: ")).read_text()
        for chunk in re.split(r"^\.\.\.\n", body, flags=re.M):  # `...` marks lines left out
            assert chunk.strip("\n") in source, f"{header}: this excerpt is not in the file:\n{chunk}"


def test_lamm_ships_a_hydra_search_path_plugin_scoped_to_lamm_apps(monkeypatch) -> None:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    import lamm.config

    [plugin] = [p for p in Plugins.instance().discover(SearchPathPlugin) if p.__module__.startswith("hydra_plugins.lamm")]
    monkeypatch.setattr(lamm.config, "plugin_config_modules", lambda: ("some_plugin.conf",))
    other_app, lamm_app = ConfigSearchPathImpl(), ConfigSearchPathImpl()
    other_app.append("main", "pkg://other.conf")
    lamm_app.append("main", "pkg://lamm.conf")
    plugin().manipulate_search_path(other_app)
    plugin().manipulate_search_path(lamm_app)
    assert [e.path for e in other_app.get_path()] == ["pkg://other.conf"]
    assert [e.path for e in lamm_app.get_path()] == ["pkg://lamm.conf", "pkg://some_plugin.conf"]


def test_registry_lists_the_plugin_encoder_and_where_it_comes_from(sandbox: Sandbox) -> None:
    assert "my_encoder" in run(REGISTRY, sandbox.root, sandbox.env).stdout
    probe = ("from lamm.registry import ENCODERS; from lamm.config import group_options, plugin_config_modules; "
             "print(ENCODERS.origin('my_encoder'), ENCODERS.origin('small_cnn'), plugin_config_modules(), "
             "'my_encoder' in group_options('model/encoder'), "
             "[n for n in ENCODERS.labelled_names() if n.startswith('my_encoder')][0])")
    out = subprocess.run([sys.executable, "-P", "-c", probe], cwd=sandbox.root, env=sandbox.env,
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["lamm-plugin-encoder", "lamm", "('lamm_plugin_encoder.conf',)", "True",
                           "my_encoder", "(lamm-plugin-encoder)"]


def test_cfg_job_shows_the_plugin_yaml(sandbox: Sandbox) -> None:
    cfg = OmegaConf.create(run(SHOW_CONFIG, sandbox.root, sandbox.env).stdout)
    assert cfg.model.encoder == {"allow_random_frozen": False, "name": "my_encoder", "image_size": 64, "patch_size": 16, "width": 256, "depth": 2,
                                 "token_mlp_dim": 64, "channel_mlp_dim": 512, "dropout": 0.0}


def test_lamm_train_with_the_plugin_encoder_writes_a_run_folder(sandbox: Sandbox) -> None:
    result = run(TRAIN, sandbox.root, sandbox.env)
    [run_dir] = [p.parent for p in (sandbox.root / "runs").glob("**/run.json")]
    assert f"run folder: {run_dir}" in " ".join(result.stdout.split())  # rich may wrap the line
    assert OmegaConf.load(run_dir / "config.yaml").model.encoder.name == "my_encoder"
    weights = load_file(str(run_dir / "checkpoints" / "last.ckpt" / "weights.safetensors"))
    mixer = [k for k in weights if "token_mlp" in k]  # the plug-in's own layers trained and were saved
    assert mixer and all(weights[k].abs().sum() > 0 for k in mixer)


def test_the_example_package_own_tests_pass(sandbox: Sandbox) -> None:
    result = run(PLUGIN_TESTS, sandbox.root, sandbox.env)
    assert re.search(r"\b5 passed\b", result.stdout), result.stdout[-2000:]


def test_without_the_package_the_option_fails_with_hydras_message(tmp_path: Path) -> None:
    result = run(SHOW_CONFIG, tmp_path, base_env(), check=False)
    assert result.returncode != 0
    assert "Could not find 'model/encoder/my_encoder'" in result.stderr
    assert "Available options in 'model/encoder'" in result.stderr and "small_cnn" in result.stderr
