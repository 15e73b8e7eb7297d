"""`lamm recipes list|show|cp|validate`, refusal of hostile recipes, recipes from anywhere, recipe hashes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lamm.cli.main import main as lamm_main
from lamm.recipes.catalog import list_recipes

BIN = Path(sys.executable).parent
SHIPPED = list_recipes()
TINY_TRAIN = ["trainer.max_steps=2", "trainer.log_every_n_steps=1", "data.batch_size=4", "data.num_workers=0"]
TINY_RECIPE = """\
# @package _global_
# A tiny recipe: a random 4-layer LLM and a small CNN, two steps.
defaults:
  - override /model/llm: tiny_random
  - _self_
run_name: tiny-recipe
model:
  encoder: {image_size: 32, width: 32, base_channels: 8, num_stages: 3}
data:
  synth:
    sizes: {train: 16, test: 8}
"""
TINY_BENCH = """\
# A tiny benchmark: colour questions of the synthetic shapes, option scoring.
name: tiny_bench
scenario: {name: synth_shapes, root: "${synth_root}", tasks: [colour], limit: 4, generate: false}
instruction: {name: standard, option_style: none}
inferencer: {name: ppl}
metrics: [accuracy]
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(exe: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LAMM_TRUST_RECIPE"}
    return subprocess.run([str(BIN / exe), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**environ, **(env or {})})


def lamm(capsys, *args: str) -> tuple[int, str, str]:
    code = lamm_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The built-in shapes data, tiny, generated once (lamm-train finds it by its manifest)."""
    from lamm.datasets.synth import generate

    root = tmp_path_factory.mktemp("data")
    generate(root / "synth-0", seed=0, sizes={"train": 16, "test": 8}, kinds=("shapes",))
    return root


# ------------------------------------------------------------------------------- list / show / cp

def test_list_shows_kind_name_and_description(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = lamm(capsys, "recipes", "list")
    assert code == 0
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert "experiment (lamm-train)" in rows["quickstart"] and "The quickstart: the real SmolLM2" in rows["quickstart"]
    assert "benchmark (lamm-eval)" in rows["shapes_ppl"] and "option scoring" in rows["shapes_ppl"]
    assert '"colour shape [x1, y1, x2, y2]"' in rows["shapes_bbox"]  # rich markup in a description is shown as text
    assert {r.name for r in SHIPPED} <= set(rows)


def test_show_prints_the_yaml_byte_for_byte_and_its_hash(capsys) -> None:
    [recipe] = [r for r in SHIPPED if r.name == "quickstart"]
    code, out, err = lamm(capsys, "recipes", "show", "quickstart")
    assert code == 0 and out == recipe.path.read_text()
    assert f"sha256 {sha256(recipe.path)}" in err and str(recipe.path) in err
    code, _, err = lamm(capsys, "recipes", "show", "quickstrat")
    assert code == 2 and "unknown recipe 'quickstrat'. Did you mean 'quickstart'?" in err


def test_cp_copies_and_never_overwrites(capsys, tmp_path) -> None:
    code, out, _ = lamm(capsys, "recipes", "cp", "shapes_ppl", str(tmp_path))
    copy = tmp_path / "shapes_ppl.yaml"
    assert code == 0 and copy.read_bytes() == next(r for r in SHIPPED if r.name == "shapes_ppl").path.read_bytes()
    assert f"lamm-eval benchmark={copy}" in out
    copy.write_text("# my edits\n")
    code, _, err = lamm(capsys, "recipes", "cp", "shapes_ppl", str(copy))
    assert code == 2 and err.strip() == f"lamm recipes: error: {copy} already exists; not overwritten " \
                                        "(choose another name or remove it)"
    assert copy.read_text() == "# my edits\n" and sorted(p.name for p in tmp_path.iterdir()) == ["shapes_ppl.yaml"]


# ---------------------------------------------------------------------------------------- validate

@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda r: f"{r.kind}/{r.name}")
def test_validate_passes_on_every_shipped_recipe(capsys, recipe) -> None:
    code, out, err = lamm(capsys, "recipes", "validate", str(recipe.path))
    assert code == 0, err
    assert out.startswith(f"{recipe.path}: ok ({recipe.kind}, sha256 {sha256(recipe.path)[:12]}") and not err


def test_a_recipe_requires_init_from_in_one_line(capsys, tmp_path) -> None:
    """`required: {init_from: ...}` (a recipe's `init_from: ???` would lose to train.yaml's null): refused
    before anything is built, the key and what to give named; validate lists it among the values to set."""
    result = run("lamm-train", "experiment=llava15_stage2", "data.path=/x.json", cwd=tmp_path)
    assert result.returncode == 2 and not (tmp_path / "runs").exists(), result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lamm-train: error: this recipe requires init_from: add init_from=<the stage-1 run")
    from lamm.config import compose
    from lamm.recipes.required import requirement_problem

    assert "init_from=<a `lamm import openflamingo`" in requirement_problem(compose("train", ["experiment=multimodal_gpt"]))
    assert requirement_problem(compose("train", ["experiment=multimodal_gpt", "init_from=/run"])) is None
    code, out, _ = lamm(capsys, "recipes", "validate", "llava15_stage2")
    assert code == 0 and out.rstrip().endswith("set on the command line: data.path, init_from)")


EXPERIMENT = "# @package _global_\ndefaults:\n  - override /model/llm: tiny_random\n  - _self_\n"
BROKEN = {
    "unknown_name": (EXPERIMENT + "model:\n  encoder:\n    name: small_cnnn\n",
                     "7: model.encoder.name: unknown encoder 'small_cnnn'. Did you mean 'small_cnn'?"),
    "unknown_parameter": (EXPERIMENT + "model:\n  encoder:\n    widht: 32\n",
                          "7: model.encoder.widht: encoder 'small_cnn' has no parameter 'widht'. Did you mean "
                          "'width'?"),
    "wrong_type": (EXPERIMENT + "optim:\n  lr: fast\n",
                   "6: optim.lr: expected float like the shipped default (0.0002), found str 'fast'"),
    "wrong_type_component": (EXPERIMENT + "model:\n  encoder:\n    width: [32]\n",
                             "7: model.encoder.width: expected int (encoder 'small_cnn'), found list [32]"),
    "missing_key": ("# @package _global_\ndefaults:\n  - override /model/encoder: null\n  - _self_\n",
                    "3: model.encoder: missing required key (choose one with model/encoder=NAME)"),
    "unknown_group_option": ("# @package _global_\ndefaults:\n  - override /model/encoder: small_cn\n",
                             "3: defaults[0]: unknown option 'small_cn' for group model/encoder. Did you mean "
                             "'small_cnn'?"),
    "unknown_group": ("# @package _global_\ndefaults:\n  - override /model/encodr: small_cnn\n",
                      "3: defaults[0]: unknown config group 'model/encodr'. Did you mean 'model/encoder'?"),
    "target": (EXPERIMENT + "model:\n  encoder:\n    _target_: os.system\n",
               "7: model.encoder._target_: `_target_: os.system` is an import path"),
    "resolver": (EXPERIMENT + "run_name: ${oc.env:HOME}\n", "5: run_name: interpolation calls the resolver `oc.env`"),
    "yaml_syntax": (EXPERIMENT + "trainer:\n  max_steps: [2\n", ": not valid YAML"),
    "bench_unknown_metric": (TINY_BENCH.replace("[accuracy]", "[accuracy, acuracy]"),
                             "6: metrics[1]: unknown metric 'acuracy'. Did you mean 'accuracy'?"),
    "bench_wrong_type": (TINY_BENCH.replace("limit: 4", "limit: many"),
                         "3: scenario.limit: expected int or null (scenario 'synth_shapes'), found str 'many'"),
    "bench_missing_scenario": ("name: b\ninferencer: {name: ppl}\nmetrics: [accuracy]\n",
                               "1: scenario: missing required key"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_fails_with_one_clear_line_per_problem(capsys, tmp_path, case) -> None:
    text, expected = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    code, out, err = lamm(capsys, "recipes", "validate", str(path))
    assert code == 2 and not out
    [line] = err.strip().splitlines()
    assert line.startswith(f"{path}:") and expected in line, line


def test_validate_a_recipe_in_a_config_dir_sees_its_groups(capsys, tmp_path) -> None:
    (tmp_path / "model" / "encoder").mkdir(parents=True)
    (tmp_path / "model" / "encoder" / "mine.yaml").write_text("name: small_cnn\nwidth: 32\n")
    (tmp_path / "experiment").mkdir()
    recipe = tmp_path / "experiment" / "mine.yaml"
    recipe.write_text("# @package _global_\ndefaults:\n  - override /model/encoder: mine\n  - _self_\n")
    assert lamm(capsys, "recipes", "validate", str(recipe))[0] == 0
    (tmp_path / "model" / "encoder" / "mine.yaml").write_text("name: nope_cnn\n")
    code, _, err = lamm(capsys, "recipes", "validate", str(recipe))
    assert code == 2 and err.strip().startswith(f"{recipe}:3: model.encoder.name: unknown encoder 'nope_cnn'")


# ------------------------------------------------------------------------------------------ safety

def test_hostile_recipe_is_refused_before_anything_runs(capsys, tmp_path, monkeypatch) -> None:
    """A resolver and a _target_ that would each create a marker: lamm-train and validate refuse, nothing runs."""
    from lamm.cli.train import main as train_main

    marker = tmp_path / "marker"
    OmegaConf.register_new_resolver("lamm_test_touch", lambda: marker.touch() or "x", replace=True)
    recipe = tmp_path / "hostile.yaml"
    recipe.write_text(EXPERIMENT + "run_name: run-${lamm_test_touch:}\nmodel:\n  encoder:\n"
                      "    _target_: pathlib.Path.touch\n    self: " + str(marker) + "\n")
    monkeypatch.delenv("LAMM_TRUST_RECIPE", raising=False)
    monkeypatch.setattr(sys, "argv", ["lamm-train", f"experiment={recipe}", "debug=fast", *TINY_TRAIN,
                                      f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}"])
    with pytest.raises(SystemExit) as exit_info:
        train_main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == [
        (f"lamm-train: error: {recipe}:5: run_name: interpolation calls the resolver `lamm_test_touch` (allowed: "
         "plain ${key} references and cpu_bf16, hydra, now, oc.dict.keys, oc.dict.values, oc.select); pass --trust-recipe "
         "if you trust this file"),
        (f"lamm-train: error: {recipe}:8: model.encoder._target_: `_target_: pathlib.Path.touch` is an import "
         "path; recipes name components by registry name only; pass --trust-recipe if you trust this file")]
    assert lamm(capsys, "recipes", "validate", str(recipe))[0] == 2
    assert not marker.exists() and not (tmp_path / "runs").exists()
    resolved = OmegaConf.create({"run_name": "run-${lamm_test_touch:}"}).run_name  # the payload is live
    assert resolved == "run-x" and marker.exists()


def test_hostile_recipe_through_lamm_train_runs_only_when_trusted(tmp_path) -> None:
    """A Hydra callback `_target_` in a shared file: refused (exit 2, file and line named, no marker);
    `--trust-recipe` lets the same file run its code (so the refusal is what kept it out)."""
    (tmp_path / "payload_marker.py").write_text("from pathlib import Path\n\n\ndef touch(path):\n"
                                                "    Path(path).touch()\n    raise SystemExit(3)\n")
    marker = tmp_path / "marker"
    recipe = tmp_path / "hostile.yaml"
    recipe.write_text(f"# @package _global_\nhydra:\n  callbacks:\n    pwn:\n      _target_: payload_marker.touch\n"
                      f"      _args_: ['{marker}']\n")
    env = {"PYTHONPATH": str(tmp_path)}
    refused = run("lamm-train", str(recipe), cwd=tmp_path, env=env)
    assert refused.returncode == 2 and not marker.exists()
    assert f"lamm-train: error: {recipe}:5: hydra.callbacks.pwn._target_: `_target_: payload_marker.touch`" \
           in refused.stderr and "Traceback" not in refused.stderr
    trusted = run("lamm-train", "--trust-recipe", str(recipe), cwd=tmp_path, env=env)
    assert trusted.returncode == 3 and marker.exists()


def test_hostile_benchmark_recipe_is_refused_by_lamm_eval(tmp_path) -> None:
    recipe = tmp_path / "bench.yaml"
    recipe.write_text(TINY_BENCH.replace("limit: 4", 'limit: "${oc.decode:4}"'))
    result = run("lamm-eval", f"benchmark={recipe}", cwd=tmp_path)
    assert result.returncode == 2 and not (tmp_path / "outputs").exists()
    assert result.stderr.strip().startswith(f"lamm-eval: error: {recipe}:3: scenario.limit: interpolation calls the "
                                            "resolver `oc.decode`")


# ------------------------------------------------------------------------ recipes from anywhere, hashes

def _run_json(runs: Path) -> dict:
    [info] = [json.loads(p.read_text()) for p in runs.glob("**/run.json")]
    return info


def test_config_dir_recipe_trains_and_records_its_hash(tmp_path, data_dir) -> None:
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    recipe = conf / "experiment" / "tiny.yaml"
    recipe.write_text(TINY_RECIPE + "evaluate: [shapes_ppl]\n")
    result = run("lamm-train", "--config-dir", str(conf), "experiment=tiny", *TINY_TRAIN,
                 f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={data_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    info = _run_json(tmp_path / "runs")
    assert info["recipe"] == {"kind": "experiment", "name": "tiny", "path": str(recipe), "sha256": sha256(recipe)}
    [run_dir] = (tmp_path / "runs" / "tiny-recipe").iterdir()
    held_out = json.loads((run_dir / "eval" / "shapes_ppl" / "results.json").read_text())
    shipped = next(r for r in SHIPPED if r.name == "shapes_ppl").path
    assert held_out["recipe_file"]["sha256"] == sha256(shipped)


def test_recipe_file_path_trains_and_records_the_file(tmp_path, data_dir) -> None:
    recipe = tmp_path / "recipes" / "quickstart.yaml"  # same name as a shipped recipe: the file still wins
    recipe.parent.mkdir()
    recipe.write_text(TINY_RECIPE)
    result = run("lamm-train", f"experiment={recipe}", *TINY_TRAIN, f"paths.runs_dir={tmp_path / 'runs'}",
                 f"paths.data_dir={data_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    info = _run_json(tmp_path / "runs")
    assert info["recipe"] == {"kind": "experiment", "name": "quickstart", "path": str(recipe),
                              "sha256": sha256(recipe)}
    assert info["command"][1] == f"experiment={recipe}"  # as typed, not the staged copy
    assert OmegaConf.load(next((tmp_path / "runs").glob("**/config.yaml"))).run_name == "tiny-recipe"


def test_shadowed_config_dir_recipe_is_an_error(tmp_path) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "quickstart.yaml").write_text(TINY_RECIPE)
    result = run("lamm-train", "--config-dir", str(tmp_path), "experiment=quickstart", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"lamm-train: error: {tmp_path / 'experiment' / 'quickstart.yaml'} is hidden by the shipped experiment "
        "'quickstart' (Hydra searches shipped configs first); rename your file")


@pytest.mark.parametrize("form", ["config_dir", "file"])
def test_benchmark_recipe_from_anywhere_records_its_hash(tmp_path, data_dir, form) -> None:
    conf = tmp_path / "conf"
    (conf / "benchmark").mkdir(parents=True)
    recipe = conf / "benchmark" / "tiny_bench.yaml"
    recipe.write_text(TINY_BENCH)
    where = ["--config-dir", str(conf), "benchmark=tiny_bench"] if form == "config_dir" else [f"benchmark={recipe}"]
    result = run("lamm-eval", *where, f"synth_root={data_dir / 'synth-0'}", f"output_dir={tmp_path / 'out'}",
                 'model.overrides=["model/llm=tiny_random","model.encoder.image_size=32","model.encoder.width=32"]',
                 "model.name=tiny", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "out" / "tiny" / "tiny_bench"
    results = json.loads((out / "results.json").read_text())
    assert results["recipe_file"] == {"kind": "benchmark", "name": "tiny_bench", "path": str(recipe),
                                      "sha256": sha256(recipe)}
    assert f"Recipe: `{recipe}` (sha256 `{sha256(recipe)}`)." in (out / "report.md").read_text()
