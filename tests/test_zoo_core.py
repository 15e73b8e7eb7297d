"""The checkpoint-format registry's shared machinery: strict lazy reading, all-or-nothing run folders,
and an imported folder read back by inference and by `lamm-train init_from=`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lamm.cli.train import with_imported_architecture
from lamm.registry import CHECKPOINT_FORMATS
from lamm.training.export import load_for_inference
from lamm.zoo import CheckpointKeyError, ImportPlan, import_checkpoint, open_state, read_import_record

BIN = Path(sys.executable).parent
# A tiny architecture: the default CNN encoder (narrower), a linear projector into the tiny random LLM.
ARCH = ["model/llm=tiny_random", "model/projector=linear", "model.encoder.width=64", "model/policy=scratch"]
PROJ = "projectors.image.proj"


class Payload:  # a pickled object, which no loader may ever unpickle
    pass


@pytest.fixture(scope="module")
def projector_shapes() -> dict[str, tuple[int, ...]]:
    from lamm.build import build_model
    from lamm.config import compose

    params = build_model(compose("train", ARCH).model).state_dict()
    return {k: tuple(v.shape) for k, v in params.items() if k.startswith("projectors.")}


@pytest.fixture(scope="module", autouse=True)
def toy_format(projector_shapes):
    """A format whose checkpoint is a file of projector tensors named `proj.*` (registered once)."""

    def importer(src: Path, scale: str = "1") -> ImportPlan:
        state = open_state(src)
        weights = {}
        for name, shape in projector_shapes.items():
            weights[name] = state.take("proj." + name.rsplit(".", 1)[-1], shape) * float(scale)
        state.finish()
        return ImportPlan(overrides=list(ARCH), weights=weights, notes={"tensors": len(weights)})

    if "toy_projector" not in CHECKPOINT_FORMATS:
        CHECKPOINT_FORMATS.register("toy_projector")(importer)
    yield


def _source(tmp: Path, shapes: dict[str, tuple[int, ...]], **changes) -> Path:
    tensors = {"proj." + n.rsplit(".", 1)[-1]: torch.randn(s) for n, s in shapes.items()}
    tensors.update(changes)
    path = tmp / "toy.safetensors"
    save_file({k: v for k, v in tensors.items() if v is not None}, str(path))
    return path


def test_reader_names_missing_unexpected_and_misshaped_keys(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.zeros(2, 3), "extra": torch.zeros(1)}, str(path))
    state = open_state(path)
    assert state.shape("w") == (2, 3)
    with pytest.raises(CheckpointKeyError, match=r"key 'w' in .*a.safetensors has shape \[2, 3\], expected \[3, 2\]"):
        state.take("w", (3, 2))
    with pytest.raises(CheckpointKeyError, match=r"missing key 'b' in .*a.safetensors"):
        state.take("b")
    state.take("w", (2, 3))
    with pytest.raises(CheckpointKeyError, match=r"unexpected key 'extra' in .*a.safetensors"):
        state.finish()


def test_reader_never_unpickles_and_unwraps_a_saved_state_dict(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": Payload()}, evil)
    with pytest.raises(CheckpointKeyError, match=r"cannot read .*evil.pt safely \(weights only"):
        open_state(evil)
    wrapped = tmp_path / "wrapped.bin"
    torch.save({"model_state_dict": {"w": torch.ones(2)}}, wrapped)
    assert open_state(wrapped).take("w").tolist() == [1.0, 1.0]
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"0")
    with pytest.raises(CheckpointKeyError, match="unknown checkpoint file type '.npz'"):
        open_state(bad)


def test_an_import_is_a_run_folder_that_inference_reads(tmp_path, projector_shapes):
    src = _source(tmp_path, projector_shapes)
    out = import_checkpoint("toy_projector", src, tmp_path / "imported", {"scale": "2"})
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "import.json", "weights.safetensors"]
    record = read_import_record(out)
    assert record["format"] == "toy_projector" and record["options"] == {"scale": "2"}
    model, cfg = load_for_inference(out)
    assert cfg.model.projector.name == "linear"
    source = open_state(src)
    for name in projector_shapes:
        expected = source.take("proj." + name.rsplit(".", 1)[-1]) * 2
        assert torch.equal(model.state_dict()[name], expected), name


def test_a_failed_import_writes_nothing_and_an_existing_folder_is_refused(tmp_path, projector_shapes):
    weight = next(n for n in projector_shapes if n.endswith("weight"))
    src = _source(tmp_path, projector_shapes, **{"proj.weight": torch.zeros(1, 1)})
    with pytest.raises(CheckpointKeyError, match=rf"key 'proj.weight' in .* has shape \[1, 1\], expected "
                                                 rf"\[{', '.join(map(str, projector_shapes[weight]))}\]"):
        import_checkpoint("toy_projector", src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.safetensors"]  # no folder, no staging left
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.json").write_text("{}")
    good = _source(tmp_path, projector_shapes)
    with pytest.raises(FileExistsError):
        import_checkpoint("toy_projector", good, taken)
    assert [p.name for p in taken.iterdir()] == ["results.json"]


def test_console_import_of_an_unknown_format_suggests_the_name(tmp_path):
    result = subprocess.run([str(BIN / "lamm"), "import", "hf_lava", str(tmp_path), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("lamm import: error:")]
    assert len(lines) == 1 and "unknown checkpoint format 'hf_lava'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_init_from_an_import_brings_its_architecture_and_the_user_overrides_win(tmp_path, projector_shapes):
    out = import_checkpoint("toy_projector", _source(tmp_path, projector_shapes), tmp_path / "imported")
    argv = with_imported_architecture([f"init_from={out}", "model/policy=full", "trainer.max_steps=2"])
    assert argv[:3] == ["model/llm=tiny_random", "model/projector=linear", "model.encoder.width=64"]
    assert "model/policy=scratch" not in argv and argv[-2:] == ["model/policy=full", "trainer.max_steps=2"]
    assert with_imported_architecture(["init_from=/nowhere", "x=1"]) == ["init_from=/nowhere", "x=1"]


def test_lamm_train_init_from_an_import_trains_the_imported_model(tmp_path, projector_shapes):
    out = import_checkpoint("toy_projector", _source(tmp_path, projector_shapes), tmp_path / "imported")
    result = subprocess.run(
        [str(BIN / "lamm-train"), f"init_from={out}", "debug=fast", "trainer.max_steps=2",
         f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"init_from {out}: {len(projector_shapes)} tensors copied" in " ".join(result.stdout.split())
    run = next((tmp_path / "runs").glob("*/*/config.yaml")).parent
    assert json.loads((run / "run.json").read_text())["resumed_from"] is None
    from omegaconf import OmegaConf

    assert OmegaConf.load(run / "config.yaml").model.projector.name == "linear"
