"""A frozen encoder must bring weights: lamm-train refuses random frozen features unless told otherwise."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lamm.build import build_model
from lamm.policy import check_frozen_encoders_have_weights
from lamm.testing import TINY_ENCODERS, tiny_model_config

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TINY_CLIP_CFG = "{vision_cfg: {image_size: 32, patch_size: 8, width: 64, layers: 3, head_width: 32}}"


@pytest.fixture(scope="module")
def frozen_clip():
    return build_model(tiny_model_config("open_clip", policy={"encoder": "frozen"}))


def test_frozen_random_encoder_is_refused_unless_allowed(frozen_clip) -> None:
    model = frozen_clip
    assert not model.encoders["image"].has_pretrained_weights
    with pytest.raises(ValueError, match=r"^model\.encoder: the image encoder OpenCLIPEncoder is frozen .* "
                                         r"model\.encoder\.allow_random_frozen=true$"):
        check_frozen_encoders_have_weights(model, model.policy, False)
    check_frozen_encoders_have_weights(model, model.policy, True)
    with pytest.raises(ValueError, match=r"allow_random_frozen: expected true or false, found 'yes'"):
        check_frozen_encoders_have_weights(model, model.policy, "yes")
    # init_from that filled every encoder tensor counts as weights; a part of them does not.
    names = [f"encoders.{k}" for k in model.encoders.state_dict()]
    check_frozen_encoders_have_weights(model, model.policy, False, initialised=names)
    with pytest.raises(ValueError, match="no pretrained weights"):
        check_frozen_encoders_have_weights(model, model.policy, False, initialised=names[1:])


def test_trained_or_loaded_encoders_pass() -> None:
    scratch = build_model(tiny_model_config("small_cnn"))  # the from-scratch recipes train their encoder
    check_frozen_encoders_have_weights(scratch, scratch.policy, False)
    video = build_model(tiny_model_config("video", policy={"encoder": "frozen"}))
    assert not video.encoders["video"].has_pretrained_weights  # its frame encoder has none
    with pytest.raises(ValueError, match="the video encoder VideoEncoder is frozen"):
        check_frozen_encoders_have_weights(video, video.policy, False)

def test_open_clip_with_a_weights_file_has_weights(frozen_clip, tmp_path) -> None:
    from safetensors.torch import save_file

    from lamm.registry import ENCODERS

    file = tmp_path / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in frozen_clip.encoders["image"].visual.state_dict().items()}, str(file))
    cfg = dict(TINY_ENCODERS["open_clip"])
    loaded = ENCODERS.build(cfg.pop("name"), pretrained=str(file), **cfg)
    assert loaded.has_pretrained_weights
    model = build_model({**tiny_model_config("open_clip", policy={"encoder": "frozen"}),
                         "encoder": {**TINY_ENCODERS["open_clip"], "pretrained": str(file)}})
    check_frozen_encoders_have_weights(model, model.policy, False)


def test_lamm_train_research_recipe_without_weights_exits_2(tmp_path) -> None:
    """`lamm-train experiment=lamm_2d ...` with no encoder weights: one line naming the flag, no run folder."""
    from lamm.datasets.synth import generate

    generate(tmp_path / "data", seed=0, sizes={"train": 8, "test": 4}, kinds=("shapes",))
    args = [str(BIN / "lamm-train"), "experiment=lamm_2d", "model/llm=tiny_random", "trainer=cpu", "trainer.devices=1",
            f"model.encoder.model_cfg={TINY_CLIP_CFG}", f"data.path={tmp_path / 'data/shapes/train.json'}",
            "trainer.max_steps=1", "data.batch_size=2", "data.num_workers=0", f"paths.runs_dir={tmp_path / 'runs'}"]
    refused = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=ENV, check=False)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("lamm-train: error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "model.encoder.allow_random_frozen=true" in errors[0], \
        refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and not list((tmp_path / "runs").glob("**/run.json"))
