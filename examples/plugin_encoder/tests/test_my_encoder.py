"""`my_encoder` keeps lamm's encoder contract, is found through the entry point, and learns inside a model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lamm.build import build_model
from lamm.registry import ENCODERS
from lamm.testing import colour_answer_batch, fit_fixed_batch, tiny_model_config

TINY = {"name": "my_encoder", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1,
        "token_mlp_dim": 16, "channel_mlp_dim": 64}


def test_the_entry_point_registers_it() -> None:
    from lamm_plugin_encoder.encoder import MixerEncoder

    assert ENCODERS.get("my_encoder") is MixerEncoder


def test_contract_tokens_width_and_transform() -> None:
    encoder = ENCODERS.build(**TINY)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8))
    x = torch.stack([encoder.transform(image)] * 2)
    assert encoder.modality == "image" and x.shape == (2, 3, 32, 32)
    assert encoder(x).shape == (2, encoder.num_tokens(), encoder.output_dim) == (2, 16, 32)
    with pytest.raises(ValueError, match=r"my_encoder expects images \[N, 3, 32, 32\], got \[2, 3, 64, 64\]"):
        encoder(torch.zeros(2, 3, 64, 64))


def test_the_yaml_composes_with_lamms_configs() -> None:
    from lamm.config import compose

    cfg = compose("train", ["model/encoder=my_encoder"])
    assert cfg.model.encoder.name == "my_encoder" and cfg.model.encoder.patch_size == 16


def test_a_model_with_it_learns_a_fixed_batch() -> None:
    torch.manual_seed(0)
    cfg = tiny_model_config()
    cfg["encoder"] = dict(TINY)
    model = build_model(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = fit_fixed_batch(model, opt, colour_answer_batch(model), steps=15)
    assert losses[-1] < 0.5 * losses[0], losses
    assert any(p.grad is not None for p in model.encoders["image"].parameters())  # the encoder trains too


def test_the_video_encoder_wraps_it_frame_by_frame() -> None:
    video = ENCODERS.build("video", num_frames=2, image_encoder=TINY)
    clip = video.transform(np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8))
    assert clip.shape == (2, 3, 32, 32)
    assert video(clip[None]).shape == (1, 2 * 16, 32) and video.num_tokens() == 32
