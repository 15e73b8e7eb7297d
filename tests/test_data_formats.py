"""Each data format round-trips a small sample written in its real format into one Batch."""
from __future__ import annotations

import io
import json
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lamm.batch import Batch
from lamm.datasets import build_collator, build_dataset
from lamm.datasets.mixture import MixtureDataset
from lamm.datasets.testing import dummy_media_specs, write_image, write_points, write_video
from lamm.registry import DATASETS, FUSIONS
from lamm.tokens import END_OF_CHUNK, PLACEHOLDERS

K = {"image": 4, "video": 6, "pointcloud": 3}
SPECS = dummy_media_specs(K)
PREFIX = FUSIONS.get("prefix").layout
CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    write_image(d / "red.png", (255, 0, 0))
    write_image(d / "blue.jpg", (0, 0, 255), size=20)
    write_video(d / "clip.mp4")
    for i in range(3):
        write_image(d / "frames" / f"{i:03d}.png", (80 * i, 0, 0))
    write_points(d / "cloud.npy")
    write_points(d / "cloud.ply", colors=True)
    write_points(d / "cloud.pcd")
    return d


def conv(q: str, a: str, *more: str) -> list[dict[str, str]]:
    turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    for i, text in enumerate(more):
        turns.append({"from": "human" if i % 2 == 0 else "gpt", "value": text})
    return turns


def write_json(path: Path, records) -> str:
    path.write_text(json.dumps(records))
    return str(path)


def load_all(tok, cfg: dict, fusion: str = "prefix", pad_side: str = "right") -> tuple[object, Batch]:
    ds = build_dataset(cfg, SPECS, tok, FUSIONS.get(fusion).layout)
    return ds, build_collator(tok, pad_side)([ds[i] for i in range(len(ds))])


def responses(tok, batch: Batch) -> list[str]:
    """Decoded text of the labelled tokens per row, after checking labels equal ids there."""
    out = []
    for row in range(len(batch)):
        lab, ids, mask = batch.labels[row], batch.input_ids[row], batch.attention_mask[row]
        keep = lab != -100
        assert torch.equal(lab[keep], ids[keep])
        assert (lab[mask == 0] == -100).all()
        for ph in PLACEHOLDERS.values():  # never a loss on media placeholders
            assert not (keep & (ids == tok.convert_tokens_to_ids(ph))).any()
        out.append(tok.decode(ids[keep]))
    return out


def placeholder_count(tok, batch: Batch, modality: str) -> list[int]:
    pid = tok.convert_tokens_to_ids(PLACEHOLDERS[modality])
    return (batch.input_ids == pid).sum(1).tolist()


def test_registered_formats():
    assert {"lamm", "llava", "mmgpt", "interleaved", "webdataset", "mixture"} <= set(DATASETS.names())


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_lamm_2d_roundtrip(tok, media, tmp_path, fusion):
    path = write_json(tmp_path / "train.json", [
        {"id": "s1", "image": str(media / "red.png"), "conversations": conv("What colour is the shape?", "red"),
         "task_type": "VQA", "task": "colour", "options": ["red", "blue"], "answer": "red", "meta": {"k": 1}},
        {"id": "s2", "image": str(media / "blue.jpg"), "task_type": "Counting",
         "conversations": conv("How many?", "two", "And the colour?", "blue")},
    ])
    ds, batch = load_all(tok, {"name": "lamm", "path": path}, fusion)
    assert batch.ids == ["s1", "s2"]
    assert responses(tok, batch) == ["red<|im_end|>", "two<|im_end|>blue<|im_end|>"]
    assert batch.media["image"].data.shape == (2, 3, 32, 32)
    assert batch.media["image"].sample_index.tolist() == [0, 1]
    per = K["image"] if fusion == "prefix" else 1
    assert placeholder_count(tok, batch, "image") == [per, per]
    eoc = (batch.input_ids == tok.convert_tokens_to_ids(END_OF_CHUNK)).sum(1).tolist()
    assert eoc == ([0, 0] if fusion == "prefix" else [1, 1])
    text = tok.decode(batch.input_ids[0])
    assert "answer the question accurately" in text  # the VQA system prompt
    assert "Count the requested objects" in tok.decode(batch.input_ids[1])
    # unknown keys stay on the parsed sample for benchmark code
    assert ds.samples[0].extra == {"task": "colour", "options": ["red", "blue"], "answer": "red", "meta": {"k": 1}}


def test_lamm_3d_point_clouds(tok, media, tmp_path):
    path = write_json(tmp_path / "train3d.json", [
        {"id": "npy", "pcl": "cloud.npy", "conversations": conv("Which shape?", "sphere"), "task_type": "classification3d"},
        {"id": "ply", "pointcloud": "cloud.ply", "conversations": conv("Which shape?", "box"), "task_type": "VQA3d"},
        {"id": "pcd", "pcl": "cloud.pcd", "conversations": conv("Which shape?", "cone"), "task_type": "detection3d"},
    ])
    ds, batch = load_all(tok, {"name": "lamm", "path": path, "root": str(media)})
    assert responses(tok, batch) == ["sphere<|im_end|>", "box<|im_end|>", "cone<|im_end|>"]
    assert batch.media["pointcloud"].data.shape == (3, 128, 3)
    assert placeholder_count(tok, batch, "pointcloud") == [3, 3, 3]
    assert "point cloud" in tok.decode(batch.input_ids[0])
    from lamm.datasets.media import load_pointcloud
    from lamm.datasets.sample import MediaRef

    ply = load_pointcloud(MediaRef("pointcloud", str(media / "cloud.ply"), "pcl"))
    assert ply.dtype == np.float32 and ply.shape == (200, 6)  # xyz + rgb


def test_video_file_and_frame_folder(tok, media, tmp_path):
    path = write_json(tmp_path / "video.json", [
        {"id": "mp4", "video": str(media / "clip.mp4"), "conversations": conv("Where does it move?", "right")},
        {"id": "frames", "video": str(media / "frames"), "conversations": conv("What changes?", "colour")},
    ])
    _, batch = load_all(tok, {"name": "lamm", "path": path}, "gated_xattn")
    assert responses(tok, batch) == ["right<|im_end|>", "colour<|im_end|>"]
    assert batch.media["video"].data.shape == (2, 4, 3, 32, 32)
    assert placeholder_count(tok, batch, "video") == [1, 1]
    from lamm.datasets.media import load_video
    from lamm.datasets.sample import MediaRef

    frames = load_video(MediaRef("video", str(media / "clip.mp4"), "video"))
    assert frames.dtype == np.uint8 and frames.shape == (8, 32, 32, 3)


def test_llava_marker_position(tok, media, tmp_path):
    path = write_json(tmp_path / "llava.json", [
        {"id": "end", "image": "red.png", "conversations": conv("Describe this picture.\n<image>", "A red square.")},
        {"id": "none", "image": "red.png", "conversations": conv("Describe it.", "Red.")},
    ])
    _, batch = load_all(tok, {"name": "llava", "path": path, "root": str(media), "system_prompt": "none"})
    assert responses(tok, batch) == ["A red square.<|im_end|>", "Red.<|im_end|>"]
    first = tok.decode(batch.input_ids[0][batch.attention_mask[0].bool()])
    assert first.startswith("### Human: Describe this picture.\n<image><image><image><image>\n### Assistant: ")
    second = tok.decode(batch.input_ids[1][batch.attention_mask[1].bool()])
    assert second.startswith("### Human: <image><image><image><image>\nDescribe it.")


def test_mmgpt_language_only_vision_language_and_multi_turn(tok, media, tmp_path):
    alpaca = write_json(tmp_path / "alpaca.json", [
        {"instruction": "Name a colour.", "output": "Red."},
        {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
    ])
    dolly = tmp_path / "dolly.jsonl"
    dolly.write_text(json.dumps({"instruction": "Say yes.", "context": "", "response": "yes", "category": "qa"}) + "\n")
    vl = write_json(tmp_path / "vl.json", [
        {"id": "vl", "image": "red.png", "instruction": "What colour is it?", "output": "red"},
        {"id": "mt", "image": "red.png", "conversations": conv("What shape?", "square", "And the colour?", "red")},
    ])
    ds, batch = load_all(tok, {"name": "mmgpt", "path": [alpaca, str(dolly), vl], "root": str(media)})
    assert batch.ids == ["#0", "#1", "#0", "vl", "mt"]
    end = "### End.<|im_end|>"  # Multimodal-GPT trains its end marker and EOS after every response
    assert responses(tok, batch) == [f"Red.{end}", f"hello{end}", f"yes{end}", f"red{end}", f"square{end}red{end}"]
    texts = [tok.decode(batch.input_ids[i][batch.attention_mask[i].bool()]) for i in range(len(batch))]
    assert "### Image:" not in texts[0] and "### Instruction:\nName a colour.\n\n### Response:\nRed." in texts[0]
    assert "### Input:\nbonjour\n\n### Response:\n" in texts[1]
    assert "### Image:\n<image><image><image><image>\n\n### Instruction:\nWhat colour is it?" in texts[3]
    assert texts[4].count("### Instruction:") == 2 and texts[4].count("### Response:") == 2
    assert batch.media["image"].sample_index.tolist() == [3, 4]
    assert ds.samples[2].extra == {"category": "qa"}


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_interleaved_documents(tok, media, tmp_path, fusion):
    doc = tmp_path / "docs.jsonl"
    doc.write_text(json.dumps({
        "id": "doc1",
        "text_list": ["A red square.", "Then a blue one.", "The end."],
        "image_info": [{"image_name": "red.png", "matched_text_index": 0},
                       {"image_name": "blue.jpg", "matched_text_index": 1}],
        "url": "http://example.invalid/1",
    }) + "\n" + json.dumps({"id": "doc2", "text_list": ["Just text."]}) + "\n")
    ds, batch = load_all(tok, {"name": "interleaved", "path": str(doc), "root": str(media)}, fusion)
    pid = tok.convert_tokens_to_ids(PLACEHOLDERS["image"])
    eoc = tok.convert_tokens_to_ids(END_OF_CHUNK)
    row = batch.input_ids[0][batch.attention_mask[0].bool()]
    lab = batch.labels[0][batch.attention_mask[0].bool()]
    # loss on every text token (and EOS / chunk ends), never on media placeholders or padding
    assert torch.equal(lab == -100, row == pid)
    assert (batch.labels[batch.attention_mask == 0] == -100).all()
    assert batch.media["image"].data.shape[0] == 2 and batch.media["image"].sample_index.tolist() == [0, 0]
    assert torch.equal(batch.media["image"].data[0, 0], torch.ones(32, 32))  # red first, in text order
    if fusion == "prefix":
        assert int((row == pid).sum()) == 2 * K["image"]
    else:
        assert int((row == pid).sum()) == 2 and int((row == eoc).sum()) == 2
        assert tok.decode(row) == ("<image>A red square. <|endofchunk|><image>Then a blue one. The end.<|im_end|>"
                                   "<|endofchunk|>")
    assert responses(tok, batch)[1] == "Just text.<|im_end|>"
    assert ds.samples[0].extra == {"url": "http://example.invalid/1"}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_stream(tok, media, tmp_path):
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        def sample(key: str, record: dict, **members: bytes) -> None:
            _add(tar, f"{key}.json", json.dumps(record).encode())
            for ext, data in members.items():
                _add(tar, f"{key}.{ext.replace('_', '.')}", data)

        sample("s0", {"conversations": conv("Colour?", "red"), "task_type": "VQA"}, png=(media / "red.png").read_bytes())
        sample("s1", {"conversations": conv("Motion?", "right")}, mp4=(media / "clip.mp4").read_bytes())
        sample("s2", {"id": "cloud", "conversations": conv("Shape?", "sphere")}, npy=(media / "cloud.npy").read_bytes())
        sample("s3", {"conversations": conv("Hi", "Hello")})
        sample("s4", {"image": ["1.jpg", "0.png"], "conversations": conv("<image> vs <image>?", "blue red")},
               **{"0_png": (media / "red.png").read_bytes(), "1_jpg": (media / "blue.jpg").read_bytes()})
    ds = build_dataset({"name": "webdataset", "path": str(shard), "shuffle": False}, SPECS, tok, PREFIX)
    assert isinstance(ds, torch.utils.data.IterableDataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=build_collator(tok))
    (batch,) = list(loader)
    assert batch.ids == ["s0", "s1", "cloud", "s3", "s4"]
    assert responses(tok, batch) == ["red<|im_end|>", "right<|im_end|>", "sphere<|im_end|>", "Hello<|im_end|>",
                                     "blue red<|im_end|>"]
    assert batch.media["image"].sample_index.tolist() == [0, 4, 4]
    # the JSON named the members: blue (1.jpg) first, then red (0.png)
    assert batch.media["image"].data[1, 2].mean() > 0.9 and batch.media["image"].data[2, 0].mean() > 0.9
    assert batch.media["video"].sample_index.tolist() == [1]
    assert batch.media["pointcloud"].sample_index.tolist() == [2]


def _mixture_sources(tmp_path: Path) -> tuple[str, str]:
    lang = write_json(tmp_path / "lang.json", [{"id": f"l{i}", "instruction": f"Q{i}", "output": "A"} for i in range(6)])
    other = write_json(tmp_path / "other.json", [{"id": f"o{i}", "instruction": f"P{i}", "output": "B"} for i in range(3)])
    return lang, other


def test_mixture_mixed(tok, tmp_path):
    lang, other = _mixture_sources(tmp_path)
    cfg = {"name": "mixture", "num_samples": 400, "max_length": 128, "seed": 3,
           "datasets": [{"name": "mmgpt", "path": lang, "weight": 3}, {"name": "mmgpt", "path": other, "weight": 1}]}
    ds = build_dataset(cfg, SPECS, tok, PREFIX)
    assert isinstance(ds, MixtureDataset) and len(ds) == 400
    share = np.mean([ds.source_of(i) == 0 for i in range(len(ds))])
    assert 0.65 < share < 0.85
    assert ds.sources[0].processor.max_length == 128  # inherited
    batch = build_collator(tok)([ds[i] for i in range(16)])
    assert {i[0] for i in batch.ids} == {"l", "o"} and len(batch) == 16  # batches mix the sources


def test_mixture_alternating(tok, tmp_path):
    from lamm.datasets.streaming.mixture import StreamMixture

    lang, other = _mixture_sources(tmp_path)
    cfg = OmegaConf.create({"name": "mixture", "mode": "alternating", "batch_size": 4,
                            "datasets": [{"name": "mmgpt", "path": lang}, {"name": "mmgpt", "path": other}]})
    ds = build_dataset(cfg, SPECS, tok, PREFIX)
    assert isinstance(ds, StreamMixture)
    items = list(islice(ds.stream(0, 1), 32))
    sources = []
    for b in range(8):
        prefixes = {item.sample.id[0] for item in items[4 * b:4 * b + 4]}
        assert len(prefixes) == 1  # a batch never straddles two sources
        sources.append(prefixes.pop())
    assert sources.count("l") == sources.count("o") == 4
    # Resumed at any batch boundary, the stream goes on with the same samples.
    again = [item.sample.id for item in islice(ds.stream(0, 1, items[11].position), 20)]
    assert again == [item.sample.id for item in items[12:]]


def _fill_paths(node, path: str) -> None:
    node.pop("synth", None)  # lamm-train's own key, removed before build_dataset (lamm.cli.train.data_config)
    # `in` is False for "???" values; ${paths...} interpolations point into lamm-train's root config.
    if OmegaConf.is_missing(node, "path") or OmegaConf.is_interpolation(node, "path"):
        node["path"] = path
    if "val_path" in node and OmegaConf.is_interpolation(node, "val_path"):
        node["val_path"] = path
    for child in node.get("datasets", []) or []:
        _fill_paths(child, path)


@pytest.mark.parametrize("yaml_file", sorted(p.name for p in CONF_DATA.glob("*.yaml")))
def test_conf_data_yaml_builds(tok, media, tmp_path, yaml_file):
    cfg = OmegaConf.load(CONF_DATA / yaml_file)
    if cfg.name == "interleaved":
        path = tmp_path / "d.jsonl"
        path.write_text(json.dumps({"text_list": ["a"], "image_info": []}) + "\n")
    elif cfg.name == "jsonl_shards":
        path = tmp_path / "s.jsonl"
        path.write_text(json.dumps({"conversations": conv("Hi", "Hello")}) + "\n")
    elif cfg.name == "webdataset":
        path = tmp_path / "s.tar"
        with tarfile.open(path, "w") as tar:
            _add(tar, "k.json", json.dumps({"conversations": conv("Hi", "Hello")}).encode())
    else:
        path = Path(write_json(tmp_path / "d.json", [{"id": "x", "instruction": "Hi", "output": "Hello",
                                                     "conversations": conv("Hi", "Hello")}]))
    _fill_paths(cfg, str(path))
    ds = build_dataset(cfg, SPECS, tok, PREFIX)
    first = next(iter(ds)) if isinstance(ds, torch.utils.data.IterableDataset) else ds[0]
    assert first is not None and (first.labels != -100).any()


def test_unknown_config_key_is_reported(tok, tmp_path):
    path = write_json(tmp_path / "d.json", [{"id": "x", "conversations": conv("Hi", "Hello")}])
    with pytest.raises(ValueError, match="'shuffle_bufer'"):
        build_dataset({"name": "lamm", "path": path, "shuffle_bufer": 3}, SPECS, tok, PREFIX)
    with pytest.raises(KeyError, match="Did you mean 'lamm'"):
        build_dataset({"name": "lam", "path": path}, SPECS, tok, PREFIX)


def _shards(tmp_path: Path, media: Path, sizes: list[int], stem: str = "shard") -> tuple[list[Path], list[str]]:
    """Tar shards holding sizes[i] image samples each; returns the shard paths and every sample id."""
    paths, ids = [], []
    png = (media / "red.png").read_bytes()
    for s, size in enumerate(sizes):
        path = tmp_path / f"{stem}-{s}.tar"
        with tarfile.open(path, "w") as tar:
            for j in range(size):
                key = f"s{s}k{j}"
                _add(tar, f"{key}.json", json.dumps({"conversations": conv("Colour?", "red")}).encode())
                _add(tar, f"{key}.png", png)
                ids.append(key)
        paths.append(path)
    return paths, ids


@pytest.mark.parametrize("sizes", [[5], [3, 4, 2]], ids=["1_shard", "3_shards"])
def test_webdataset_shipped_config_with_workers_reads_every_sample_once(tok, media, tmp_path, sizes):
    cfg = OmegaConf.load(CONF_DATA / "webdataset.yaml")
    assert cfg.num_workers == 2
    paths, ids = _shards(tmp_path, media, sizes)
    cfg.path = str(tmp_path / f"shard-{{0..{len(sizes) - 1}}}.tar")  # a brace pattern, expanded
    ds = build_dataset(cfg, SPECS, tok, PREFIX)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=cfg.num_workers, collate_fn=build_collator(tok))
    for epoch in range(2):
        if epoch:
            ds.set_epoch(epoch)  # another shard order, still every sample once
        seen = [i for batch in loader if batch is not None for i in batch.ids]
        assert sorted(seen) == sorted(ids)  # every sample exactly once, none lost, none repeated
    assert ds.skipped.counts() == {}


@pytest.mark.parametrize("num_shards", [1, 3, 4, 6])
def test_webdataset_split_across_ranks_and_workers(tok, media, tmp_path, monkeypatch, caplog, num_shards):
    paths, ids = _shards(tmp_path, media, [4 + s for s in range(num_shards)])
    ds = build_dataset({"name": "webdataset", "path": [str(p) for p in paths], "shuffle": True, "seed": 1},
                       SPECS, tok, PREFIX)
    world, workers = 2, 2
    for epoch in range(2):
        if epoch:
            ds.set_epoch(epoch)
        per_reader = {}
        for rank in range(world):
            for worker in range(workers):
                for key, value in {"RANK": rank, "WORLD_SIZE": world, "WORKER": worker, "NUM_WORKERS": workers}.items():
                    monkeypatch.setenv(key, str(value))
                with caplog.at_level("WARNING"):
                    per_reader[rank, worker] = [s.id for s in ds]
        seen = [i for got in per_reader.values() for i in got]
        assert sorted(seen) == sorted(ids)
        assert all(per_reader.values())  # no reader (so no rank) is left without samples
    warnings = [r for r in caplog.records if "shard(s) for 4 reader(s)" in r.getMessage()]
    assert len(warnings) == (1 if num_shards < world * workers else 0)
    from lamm.datasets.formats.webdataset_shards import assign_shards

    for n in range(1, 9):  # assign_shards is a partition of (shard, sample) for any shard count
        owners = {}
        for slot in range(4):
            shards, member, group = assign_shards(n, slot, 4)
            for s in shards:
                for j in range(12):
                    if j % group == member:
                        assert (s, j) not in owners
                        owners[s, j] = slot
        assert len(owners) == 12 * n
