"""hf_vision against the towers and image processors transformers itself builds and saves (tiny, random)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lamm.encoders.hf_vision import HFVisionEncoder, expand_to_square
from lamm.testing import TINY_VISION_MEAN as MEAN
from lamm.testing import save_tiny_vision_tower

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("towers")
    return {kind: save_tiny_vision_tower(kind, root) for kind in ("clip", "clip_full", "siglip", "dinov2")}


def _image(width: int = 40, height: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _reference(path: Path, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """HF's own hidden states (and last_hidden_state) of the saved tower."""
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(path)
    cls = tf.CLIPVisionModel if config.model_type == "clip" else tf.AutoModel
    model = cls.from_pretrained(path).eval()
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states, out.last_hidden_state


@pytest.mark.parametrize("kind,prefix", [("clip", 1), ("clip_full", 1), ("siglip", 0), ("dinov2", 1)])
def test_features_equal_hf_hidden_states(towers, kind, prefix) -> None:
    from transformers import AutoImageProcessor

    path = towers[kind]
    images = [_image(seed=s) for s in range(2)]
    transform = HFVisionEncoder(str(path), layer=-1).transform
    pixels = torch.stack([transform(im) for im in images])
    assert torch.equal(pickle.loads(pickle.dumps(transform))(images[0]), pixels[0])  # DataLoader workers
    # The transform is the tower's own processor, unchanged.
    expected_pixels = AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, expected_pixels)
    hidden, _ = _reference(path, pixels)
    assert len(hidden) == 4
    for layer in (-2, 1, 3, 0):
        for select in ("patch", "full"):
            enc = HFVisionEncoder(str(path), layer=layer, select=select).eval()
            with torch.no_grad():
                got = enc(pixels)
            want = hidden[layer] if select == "full" else hidden[layer][:, prefix:]
            assert got.shape == want.shape == (2, enc.num_tokens(), 32), (layer, select)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            assert enc.output_dim == 32 and enc.has_pretrained_weights
    assert HFVisionEncoder(str(path), select="patch").num_tokens() == 16
    assert HFVisionEncoder(str(path), select="full").num_tokens() == 16 + prefix


def test_post_layernorm_gives_last_hidden_state(towers) -> None:
    """BLIP-2 and SigLIP read the last layer after the final norm: HF's `last_hidden_state`."""
    for kind in ("siglip", "dinov2"):
        path = towers[kind]
        enc = HFVisionEncoder(str(path), layer=-1, select="full", post_layernorm=True).eval()
        pixels = enc.transform(_image()).unsqueeze(0)
        _, last = _reference(path, pixels)
        with torch.no_grad():
            torch.testing.assert_close(enc(pixels), last, atol=1e-5, rtol=0)


def test_pad_to_square_uses_the_mean_colour(towers) -> None:
    from transformers import AutoImageProcessor

    image = _image(width=40, height=24)
    background = tuple(int(m * 255) for m in MEAN)
    # By hand: a 40x40 canvas of the mean colour with the 40x24 image 8 rows down.
    canvas = np.empty((40, 40, 3), dtype=np.uint8)
    canvas[:] = background
    canvas[8:32] = np.asarray(image)
    padded = expand_to_square(image, background)
    assert np.array_equal(np.asarray(padded), canvas)
    tall = expand_to_square(_image(width=10, height=30), background)
    assert tall.size == (30, 30) and np.asarray(tall)[0, 0].tolist() == list(background)
    assert np.array_equal(np.asarray(tall)[:, 10:20], np.asarray(_image(width=10, height=30)))

    path = towers["clip"]
    enc = HFVisionEncoder(str(path), pad_to_square=True)
    expected = AutoImageProcessor.from_pretrained(path)(images=Image.fromarray(canvas), return_tensors="pt")
    assert torch.equal(enc.transform(image), expected["pixel_values"][0])
    assert not torch.equal(enc.transform(image), HFVisionEncoder(str(path)).transform(image))


def test_dtype_and_bad_options(towers, tmp_path) -> None:
    half = HFVisionEncoder(str(towers["siglip"]), dtype="bfloat16").eval()
    with torch.no_grad():
        assert half(half.transform(_image()).unsqueeze(0)).dtype == torch.bfloat16
    path = str(towers["clip"])
    cases = [(dict(path=path, layer=9), "model.encoder.layer"), (dict(path=path, select="cls"), "model.encoder.select"),
             (dict(path=str(tmp_path / "missing" / "x")), "is not a folder"),
             (dict(path=path, dtype="float99"), "model.encoder.dtype"),
             (dict(path=path, post_layernorm=True, layer=-1), None)]
    for kwargs, message in cases:
        if message is None:
            HFVisionEncoder(**kwargs)  # CLIP has a post_layernorm: accepted
            continue
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            HFVisionEncoder(**kwargs)


def test_lamm_train_with_a_clip_tower_folder(towers, tmp_path) -> None:
    """What a user types: the LLaVA-1.5 encoder YAML pointed at a CLIP folder, two training steps."""
    args = [str(BIN / "lamm-train"), "debug=fast", "trainer.max_steps=2", "model/encoder=hf_clip_vit_l14_336",
            f"model.encoder.path={towers['clip_full']}", "data.synth.sizes.train=8", "data.synth.sizes.test=4",
            f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=ENV, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = [p.parent for p in (tmp_path / "runs").glob("**/run.json")]
    config = (run / "config.yaml").read_text()
    assert "hf_vision" in config and str(towers["clip_full"]) in config
