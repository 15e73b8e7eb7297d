"""End to end: built-in synthetic data -> data pipeline -> MultimodalLM, for both fusions."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from lamm.build import build_model
from lamm.datasets import build_collator, build_dataset
from lamm.datasets.synth import generate
from lamm.testing import tiny_model_config


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=3, sizes={"train": 12, "test": 6}, kinds=("shapes", "video", "points"))
    return out


def _data_cfg(path) -> dict:
    return {"name": "lamm", "path": str(path), "template": "chat", "max_length": 256}


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_synthetic_shapes_train_a_step(synth_dir, fusion: str) -> None:
    model = build_model(tiny_model_config(fusion=fusion))
    dataset = build_dataset(_data_cfg(synth_dir / "shapes" / "train.json"), model.media_specs(),
                            model.tokenizer, model.fusion.layout)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=build_collator(model.tokenizer, "right"))
    batch = next(iter(loader))
    assert batch.media["image"].data.shape == (4, 3, 32, 32)
    loss = model(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    # The supervised tokens are exactly the answers the generator recorded.
    records = json.loads((synth_dir / "shapes" / "train.json").read_text())[:4]
    for row, record in enumerate(records):
        labelled = batch.labels[row][batch.labels[row] != -100]
        assert model.tokenizer.decode(labelled, skip_special_tokens=True).strip() == record["answer"]


def test_synthetic_mixed_modalities_through_one_model(synth_dir) -> None:
    from lamm.testing import TINY_ENCODERS, TINY_PROJECTORS

    cfg = tiny_model_config(fusion="gated_xattn")
    cfg["encoder"] = {"image": TINY_ENCODERS["small_cnn"], "video": TINY_ENCODERS["video"],
                      "pointcloud": TINY_ENCODERS["point_bert"]}
    cfg["projector"] = TINY_PROJECTORS["perceiver"]
    model = build_model(cfg)
    data = {"name": "mixture", "mode": "mixed", "datasets": [
        _data_cfg(synth_dir / kind / "train.json") for kind in ("shapes", "video", "points")
    ]}
    dataset = build_dataset(data, model.media_specs(), model.tokenizer, model.fusion.layout)
    loader = DataLoader(dataset, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(0),
                        collate_fn=build_collator(model.tokenizer, "right"))
    batch = next(iter(loader))
    assert set(batch.media) == {"image", "video", "pointcloud"}
    loss = model(batch).loss
    assert torch.isfinite(loss)


def test_generation_prompts_from_held_out_split(synth_dir) -> None:
    model = build_model(tiny_model_config(fusion="prefix")).eval()
    dataset = build_dataset(_data_cfg(synth_dir / "shapes" / "test.json"), model.media_specs(),
                            model.tokenizer, model.fusion.layout, split="train", training=False)
    batch = build_collator(model.tokenizer, "left")([dataset[i] for i in range(3)])
    out = model.generate(batch, max_new_tokens=4)
    assert out.shape[0] == 3
