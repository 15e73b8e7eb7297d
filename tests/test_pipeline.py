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
    # The supervised tokens are exactly the answers the generator recorded (first question, then follow-ups).
    records = json.loads((synth_dir / "shapes" / "train.json").read_text())[:4]
    for row, record in enumerate(records):
        labelled = batch.labels[row][batch.labels[row] != -100]
        answers = [turn["value"] for turn in record["conversations"][1::2]]
        assert len(answers) > 1 and answers[0] == record["answer"]
        assert model.tokenizer.decode(labelled, skip_special_tokens=True).split() == " ".join(answers).split()


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
    tok = model.tokenizer
    dataset = build_dataset(_data_cfg(synth_dir / "shapes" / "test.json"), model.media_specs(),
                            tok, model.fusion.layout, split="train", training=False)
    items = [dataset[i] for i in range(3)]
    records = json.loads((synth_dir / "shapes" / "test.json").read_text())[:3]
    batch = build_collator(tok, "left")(items)
    for row, (item, record) in enumerate(zip(items, records)):
        prompt = tok.decode(batch.input_ids[row][batch.attention_mask[row] == 1])
        # The prompt stops at the assistant's generation prompt; the answer is not in it but kept as target.
        assert prompt.endswith("<|im_start|>assistant\n"), prompt[-80:]
        assert record["answer"] not in prompt.split("<|im_start|>assistant")[-1]
        assert f"assistant\n{record['answer']}" not in prompt
        assert prompt.count("<|im_start|>assistant") == 1
        assert item.target == record["answer"]
        assert (item.labels == -100).all()
    out = model.generate(batch, max_new_tokens=4)
    assert out.shape[0] == 3


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_image_video_points_and_text_only_through_processor_and_model(tmp_path, fusion: str) -> None:
    from lamm.datasets.testing import write_image, write_points, write_video
    from lamm.testing import TINY_ENCODERS, TINY_PROJECTORS
    from lamm.tokens import PLACEHOLDERS

    cfg = tiny_model_config(fusion=fusion)
    cfg["encoder"] = {"image": TINY_ENCODERS["small_cnn"], "video": TINY_ENCODERS["video"],
                      "pointcloud": TINY_ENCODERS["point_bert"]}
    cfg["projector"] = TINY_PROJECTORS["perceiver"]
    model = build_model(cfg)
    specs = model.media_specs()
    write_image(tmp_path / "a.png", (200, 30, 30))
    write_video(tmp_path / "clip.mp4")
    write_points(tmp_path / "cloud.ply", num_points=300, colors=True)  # [P, 6]: colours are dropped by the transform
    records = [
        {"id": "img", "image": "a.png", "conversations": [{"from": "human", "value": "Colour?"},
                                                          {"from": "gpt", "value": "red"}]},
        {"id": "vid", "video": "clip.mp4", "conversations": [{"from": "human", "value": "Where does it move?"},
                                                             {"from": "gpt", "value": "right"}]},
        {"id": "pts", "pcl": "cloud.ply", "conversations": [{"from": "human", "value": "Shape?"},
                                                            {"from": "gpt", "value": "blob"}]},
        {"id": "txt", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]},
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    dataset = build_dataset(_data_cfg(path), specs, model.tokenizer, model.fusion.layout)
    batch = build_collator(model.tokenizer, "right")([dataset[i] for i in range(len(dataset))])
    assert batch.ids == ["img", "vid", "pts", "txt"]
    media_of = {"img": "image", "vid": "video", "pts": "pointcloud", "txt": None}
    for row, sample_id in enumerate(batch.ids):
        for modality, placeholder in PLACEHOLDERS.items():
            count = int((batch.input_ids[row] == model.tokenizer.convert_tokens_to_ids(placeholder)).sum())
            per_medium = model.fusion.layout.placeholders_per_medium(specs[modality].projected_tokens)
            expected = per_medium if media_of[sample_id] == modality else 0
            assert count == expected, (sample_id, modality, count)
    assert {m: mb.sample_index.tolist() for m, mb in batch.media.items()} == {
        "image": [0], "video": [1], "pointcloud": [2]}
    assert batch.media["pointcloud"].data.shape[-1] == 3
    loss = model(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
