"""The console scripts' error boundary, the override pre-check on MISSING keys, and sweep folder names."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lamm.cli.errors import describe, is_expected, report, settle_failed_run
from lamm.cli.sweep import safe_part, sweep_subdir, swept_keys
from lamm.config import compose, config_dir
from lamm.datasets.errors import DataError
from lamm.datasets.media import MediaLimits
from lamm.tokens import TextLayout
from lamm.training.run_folder import RunFolderLockedError

BIN = Path(sys.executable).parent
DATA_CONFIGS = sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))
FAST = ["model/llm=tiny_random", "trainer.max_steps=1", "data.num_workers=0", "data.batch_size=2"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_data_path_of_every_shipped_data_config_reaches_data_loading(tmp_path: Path, name: str) -> None:
    """What a user types first: `lamm-train data=NAME data.path=FILE` gets past the key check to the data."""
    bad = tmp_path / "mine.json"  # not JSON: reaching it proves the key was accepted and the file opened
    bad.write_text("this is not json\n")
    cfg = compose("train", [f"data={name}"])
    # Every required key, as typed: data.path, or data.datasets.0.path of a mixture.
    missing = sorted(re.sub(r"\[(\d+)\]", r".\1", k) for k in OmegaConf.missing_keys(cfg) if k.startswith("data."))
    keys = missing or ["data.path"]
    synth = ["data.synth.sizes.train=8", "data.synth.sizes.test=8"] if "synth" in cfg.data else []
    result = subprocess.run(
        [str(BIN / "lamm-train"), f"data={name}", *(f"{k}={bad}" for k in keys), *FAST, *synth,
         "data.on_error=raise", f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "unknown config key" not in result.stderr
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = error_lines(result.stderr)
    assert str(bad) in line, line  # streamed formats too: "not a tar archive", "a JSONL shard's name ends in .jsonl"
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").glob("**/run.json")), "a failed run left its folder"


def test_override_check_accepts_missing_values_and_list_items() -> None:
    from lamm.cli.train import check_override_keys

    assert check_override_keys(["data=lamm_2d", "data.path=/x.json"]) is None
    assert check_override_keys(["data=mixture", "data.datasets.0.path=/x.json", "data.datasets.1.path=/y"]) is None
    problem = check_override_keys(["data=lamm_2d", "data.pathh=/x.json"])
    assert problem and problem.startswith("unknown config key 'data.pathh': data has") and "path" in problem
    assert "data.datasets.5.path" in (check_override_keys(["data=mixture", "data.datasets.5.path=/x"]) or "")


def test_bad_group_choice_and_bad_value_are_one_line(tmp_path: Path) -> None:
    for args, culprit in ((["data=nonexistent"], "data/nonexistent"), (["trainer.max_steps=[1"], "trainer.max_steps")):
        result = subprocess.run([str(BIN / "lamm-train"), *args, f"paths.runs_dir={tmp_path}/runs",
                                 f"paths.data_dir={tmp_path}/data"], capture_output=True, text=True, timeout=120,
                                cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("lamm-train: error: ") and culprit in line, line


def test_readme_sweep_writes_one_readable_folder_per_job(tmp_path: Path) -> None:
    """README: `lamm-train -m model/fusion=prefix,gated_xattn debug=fast` (made tiny like tests/test_training.py)."""
    result = subprocess.run(
        [str(BIN / "lamm-train"), "-m", "model/fusion=prefix,gated_xattn", "debug=fast", "trainer.max_steps=1",
         "data.synth.sizes.train=16", "data.synth.sizes.test=8", f"paths.runs_dir={tmp_path / 'a/b'}",
         f"paths.data_dir={tmp_path / 'data'}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = list((tmp_path / "a/b/multirun").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0-fusion=prefix", "1-fusion=gated_xattn"]
    for job in jobs:
        folder = sweep / job
        assert (folder / "checkpoints/last.ckpt/weights.safetensors").exists()
        overrides = OmegaConf.load(folder / ".hydra/overrides.yaml")  # the job's full overrides
        assert "debug=fast" in overrides and f"model/fusion={job.split('=')[1]}" in overrides
        assert OmegaConf.load(folder / "config.yaml").model.fusion.name == job.split("=")[1]


def test_sweep_subdir_names() -> None:
    argv = ["-m", "model/fusion=prefix,gated_xattn", "debug=fast", "paths.runs_dir=/a/b", "optim.lr=1e-4,3e-4"]
    assert swept_keys(argv) == {"model/fusion", "optim.lr"}
    assert sweep_subdir(0, ["model/fusion=prefix", "debug=fast", "paths.runs_dir=/a/b", "optim.lr=1e-4"], argv) == \
        "0-fusion=prefix,optim.lr=1e-4"
    # A swept path is one path component; nothing swept known: every override, made safe.
    assert sweep_subdir(3, ["paths.data_dir=/x/y z"], ["-m", "paths.data_dir=/x/y z,/q"]) == "3-paths.data_dir=_x_y_z"
    assert "/" not in sweep_subdir(1, ["data.path=/d/e.json", "resume=auto"], [])
    long = safe_part("k=" + "v" * 500)
    assert len(long) <= 120 and long != safe_part("k=" + "v" * 499)


def test_taxonomy_and_debug_traceback(capsys, monkeypatch) -> None:
    import torch

    try:
        torch.zeros(2) @ torch.zeros(3)  # a shape bug inside torch: not the user's fault
    except RuntimeError as exc:
        assert not is_expected(exc)
        assert report("lamm-x", exc) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "please report" in err.splitlines()[-1]

    data = DataError("bad", file="/d.json", sample_id="7", field="image")
    try:
        raise data
    except DataError as exc:
        assert report("lamm-x", exc) == 2
        assert capsys.readouterr().err == "lamm-x: error: data error in /d.json sample '7' field 'image': bad\n"
        monkeypatch.setenv("LAMM_DEBUG", "1")
        assert report("lamm-x", exc) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.splitlines()[-1].startswith("lamm-x: error: data error in /d.json")
    assert describe(PermissionError(13, "Permission denied", "/r/x")) == ["Permission denied (/r/x)"]
    assert describe(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))[0].startswith("not UTF-8")


def test_failed_run_folder_is_removed_or_marked(tmp_path: Path) -> None:
    fresh = tmp_path / "runs/name/t1"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / "config.yaml").write_text("a: 1\n")
    settle_failed_run(fresh, DataError("bad", file="/x"))
    assert not (tmp_path / "runs/name").exists()  # nothing of value: gone, with its empty run_name folder
    trained = tmp_path / "runs/other/t2"
    (trained / "checkpoints/step=000002").mkdir(parents=True)
    settle_failed_run(trained, DataError("bad", file="/x"))
    assert (trained / "FAILED").read_text().startswith("data error in /x")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")  # hydra.run.dir=an existing folder: never deleted
    settle_failed_run(foreign, ValueError("x"))
    assert (foreign / "notes.txt").exists() and (foreign / "FAILED").exists()
    live = tmp_path / "runs/live/t3"  # two runs started in the same second share a folder: the refused one
    (live / ".hydra").mkdir(parents=True)  # must leave the live run's folder as it is
    (live / "config.yaml").write_text("a: 1\n")
    settle_failed_run(live, RunFolderLockedError("in use", live.resolve()))
    assert (live / "config.yaml").exists() and not (live / "FAILED").exists()


def test_shipped_data_configs_carry_the_default_media_limits() -> None:
    defaults = vars(MediaLimits())
    for name in DATA_CONFIGS:
        node = OmegaConf.load(config_dir() / "data" / f"{name}.yaml")
        assert dict(node.media_limits) == defaults, name


def test_desiderata_figure_gives_each_metric_family_its_own_scale() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from lamm.benchmarks.desiderata import summary_figure

    rows = [{"dimension": "robustness", "variant": "corrupted", "metric": m, "value": v}
            for m, v in (("rrm_image", 87.5), ("rrm_text", 40.0), ("accuracy_clean", 0.06))]
    rows += [{"dimension": "calibration", "variant": "ppl", "metric": "accuracy", "value": 0.8},
             {"dimension": "calibration", "variant": "ppl", "metric": "ece", "value": 0.02},
             {"dimension": "icl", "variant": "icl - zero_shot", "metric": "accuracy_gain", "value": -0.1}]
    axes = summary_figure(rows).axes
    panels = {(ax.get_title(), ax.get_ylabel()): (ax.get_ylim(), [t.get_text() for t in ax.get_xticklabels()])
              for ax in axes}
    assert set(panels) == {("calibration", "rate (0-1)"), ("icl", "accuracy gain (-1 to 1)"),
                           ("robustness", "rate (0-1)"), ("robustness", "RRM (100 = clean, 0 = chance)")}
    rate_lim, rate_bars = panels[("robustness", "rate (0-1)")]
    assert rate_lim == (0.0, 1.0) and rate_bars == ["corrupted\naccuracy_clean"]  # 0.06 is visible on its own axis
    rrm_lim, rrm_bars = panels[("robustness", "RRM (100 = clean, 0 = chance)")]
    assert rrm_lim == (0.0, 100.0) and len(rrm_bars) == 2
    assert panels[("icl", "accuracy gain (-1 to 1)")][0] == (-1.0, 1.0)


def test_broken_shard_is_one_data_error_naming_it(tok, tmp_path: Path) -> None:
    from lamm.datasets import build_dataset
    from lamm.datasets.testing import dummy_media_specs

    shard = tmp_path / "train-000.tar"
    shard.write_bytes(b"not a tar archive\n" * 50)
    with pytest.raises(DataError) as info:
        list(build_dataset({"name": "webdataset", "path": str(shard), "on_error": "raise", "shuffle": False},
                           dummy_media_specs({"image": 4}), tok, TextLayout()))
    assert str(info.value).startswith(f"data error in {shard}: cannot read shard")
    assert info.value.reason == "bad_shard"


def test_media_limits_refuse_before_decoding(tmp_path: Path) -> None:
    import importlib.util

    from lamm.datasets.media import load_image, load_pointcloud, media_limits, set_media_limits
    from lamm.datasets.sample import MediaRef

    spec = importlib.util.spec_from_file_location("make_corpus", Path(__file__).parent / "corpus" / "make_corpus.py")
    corpus = sys.modules.setdefault("make_corpus", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(corpus)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(corpus.png_header(30000, 30000))  # PIL's own bomb error (over 2x its limit)
    big = tmp_path / "big.png"
    big.write_bytes(corpus.png_header(10000, 6000))  # under PIL's limit, over ours (50 Mpx)
    for path in (bomb, big):
        with pytest.raises(DataError) as info:
            load_image(MediaRef("image", str(path), "image"))
        assert info.value.reason == "media_limit" and str(path) in str(info.value)
    cloud = tmp_path / "c.npy"
    import numpy as np

    np.save(cloud, np.zeros((300, 3), dtype=np.float32))
    before = media_limits()
    try:
        set_media_limits(MediaLimits.from_config({"max_points": 100}))
        with pytest.raises(DataError, match="300 points, over data.media_limits.max_points=100"):
            load_pointcloud(MediaRef("pointcloud", str(cloud), "pcl"))
        set_media_limits(MediaLimits.from_config({"max_points": None}))
        assert load_pointcloud(MediaRef("pointcloud", str(cloud), "pcl")).shape == (300, 3)
    finally:
        set_media_limits(before)
    with pytest.raises(ValueError, match="unknown key.*max_pixel"):
        MediaLimits.from_config({"max_pixel": 5})


def test_a_runtime_error_lamm_raises_is_expected_one_from_torch_is_not() -> None:
    from lamm.datasets.synth import shapes

    try:  # a RuntimeError whose innermost frame is in datasets/synth/shapes.py (datasets/ installs as lamm.datasets)
        exec(compile("raise RuntimeError('could not place 9 shapes')", shapes.__file__, "exec"))
    except RuntimeError as exc:
        assert is_expected(exc)
