"""The frozen-feature cache: same loss with and without it, stale caches refused, and the typed commands."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lamm.build import build_model
from lamm.datasets import build_collator, build_dataset
from lamm.datasets.feature_cache import (FeatureCacheError, build_cache, check_deterministic, media_references,
                                         with_feature_cache)
from lamm.datasets.synth import generate
from lamm.testing import tiny_model_config

BIN = Path(sys.executable).parent
ALIGN = {"encoder": "frozen", "projector": "full", "fusion": "full", "llm": "frozen"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fc")
    generate(root / "data", sizes={"train": 6, "test": 2}, kinds=("shapes",))
    torch.manual_seed(0)
    model = build_model(tiny_model_config(encoder="small_vit", policy=ALIGN)).eval()
    data = {"name": "lamm", "path": str(root / "data" / "shapes" / "train.json"), "template": "chat", "max_length": 96}
    dataset = build_dataset(data, model.media_specs(), model.tokenizer, model.fusion.layout)
    reports = build_cache(root / "cache", list(media_references(dataset)), dict(model.encoders))
    return root, model, data, dataset, reports


def _batch(model, data, specs):
    dataset = build_dataset(data, specs, model.tokenizer, model.fusion.layout)
    return dataset, build_collator(model.tokenizer)([dataset[i] for i in range(4)])


def test_cached_features_give_the_same_loss_and_skip_the_encoder(setup, monkeypatch) -> None:
    root, model, data, _, reports = setup
    assert [(r.modality, r.media, r.computed) for r in reports] == [("image", 6, 6)]
    _, plain = _batch(model, data, model.media_specs())
    specs, caches = with_feature_cache(root / "cache", model.media_specs(), dict(model.encoders))
    dataset, cached = _batch(model, data, specs)
    assert caches[0].check(media_references(dataset)) == 6
    assert cached.media["image"].encoded and not plain.media["image"].encoded
    assert cached.media["image"].data.shape[1:] == (model.encoders["image"].num_tokens(), model.encoders["image"].output_dim)
    with torch.no_grad():
        expected = model(plain).loss
        monkeypatch.setattr(model.encoders["image"], "forward", lambda x: pytest.fail("the encoder ran"))
        got = model(cached).loss
    assert torch.equal(got, expected), (got, expected)
    # A second build adds nothing: every medium is cached already.
    again = build_cache(root / "cache", list(media_references(dataset)), dict(model.encoders))
    assert [(r.media, r.computed) for r in again] == [(6, 0)]


def test_stale_or_mismatched_caches_are_refused(setup, tmp_path) -> None:
    root, model, data, dataset, _ = setup
    # Another encoder (other weights): refused before any data is read.
    torch.manual_seed(1)
    other = build_model(tiny_model_config(encoder="small_vit", policy=ALIGN))
    with pytest.raises(FeatureCacheError, match="built by another image encoder, weights or transform"):
        with_feature_cache(root / "cache", other.media_specs(), dict(other.encoders))
    # A trained encoder changes its features: no cache.
    trained = build_model(tiny_model_config(encoder="small_vit"))
    with pytest.raises(FeatureCacheError, match="needs a frozen encoder"):
        with_feature_cache(root / "cache", trained.media_specs(), dict(trained.encoders))
    # A media file changed after the cache was built: named, with its sample.
    _, caches = with_feature_cache(root / "cache", model.media_specs(), dict(model.encoders))
    sample_id, ref = next(media_references(dataset))
    original = Path(ref.path).read_bytes()
    try:
        Image.new("RGB", (64, 64), "black").save(ref.path)
        with pytest.raises(FeatureCacheError, match=f"no features for {ref.path} \\(sample '{sample_id}'\\)"):
            caches[0].check(media_references(dataset))
    finally:
        Path(ref.path).write_bytes(original)
    # A random transform (augmentation) cannot be cached.
    from torchvision import transforms as T

    random_crop = T.Compose([T.RandomResizedCrop(16), T.ToTensor()])
    with pytest.raises(FeatureCacheError, match="transform is random"):
        check_deterministic(random_crop, Image.new("RGB", (32, 32), "red"), "image")
    # Not a cache folder.
    with pytest.raises(FeatureCacheError, match="is not a feature cache"):
        with_feature_cache(tmp_path, model.media_specs(), dict(model.encoders))


def test_cache_features_then_lamm_train_reads_it(tmp_path: Path) -> None:
    """What a user types: `lamm cache-features OVERRIDES data.feature_cache=DIR`, then lamm-train with the same
    (plus data.packing=true data.group_by_length=true)."""
    overrides = ["debug=fast", "data.synth.sizes.train=8", "data.synth.sizes.test=2", f"paths.data_dir={tmp_path / 'data'}",
                 "model/policy=align", "model.encoder.allow_random_frozen=true", f"data.feature_cache={tmp_path / 'feats'}"]
    made = subprocess.run([str(BIN / "lamm"), "cache-features", *overrides], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "image: 8 media, 8 computed now" in made.stdout
    # The same run packs its samples and groups them by length too (one training run for all three switches).
    run = subprocess.run([str(BIN / "lamm-train"), *overrides, "trainer.max_steps=2", f"paths.runs_dir={tmp_path / 'runs'}",
                          "logger=[csv]", "data.packing=true", "data.group_by_length=true"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert list((tmp_path / "runs").glob("**/checkpoints/last.ckpt"))
