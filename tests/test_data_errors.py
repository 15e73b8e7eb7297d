"""Bad input fails early with a one-line error naming file, sample and field, or is skipped and counted."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lamm.datasets import DataError, build_collator, build_dataset
from lamm.datasets.testing import dummy_media_specs, write_image, write_video
from lamm.registry import FUSIONS

SPECS = dummy_media_specs()
PREFIX = FUSIONS.get("prefix").layout


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    write_image(d / "good.png")
    (d / "corrupt.png").write_bytes(b"this is not a png at all")
    write_video(d / "good.mp4")
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage garbage garbage")
    pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    np.save(d / "good.npy", pts)
    pts[7, 1] = np.nan
    np.save(d / "nan.npy", pts)
    inf = pts.copy()
    inf[7, 1] = np.inf
    np.save(d / "inf.npy", inf)
    return d


def conv(q: str = "Question?", a: str = "Answer.") -> list[dict[str, str]]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


GOOD = {"id": "good", "image": "good.png", "conversations": conv()}

# name -> (bad record, expected field, expected reason, expected message fragment, found at load time?)
CASES = {
    "corrupt_image": ({"id": "bad", "image": "corrupt.png", "conversations": conv()}, "image", "corrupt_image",
                      "cannot read image", False),
    "missing_image": ({"id": "bad", "image": "nope.png", "conversations": conv()}, "image", "missing_file",
                      "missing file", False),
    "nan_points": ({"id": "bad", "pcl": "nan.npy", "conversations": conv()}, "pcl", "bad_pointcloud", "NaN/inf", False),
    "inf_points": ({"id": "bad", "pointcloud": "inf.npy", "conversations": conv()}, "pointcloud", "bad_pointcloud",
                   "NaN/inf", False),
    "unreadable_video": ({"id": "bad", "video": "broken.mp4", "conversations": conv()}, "video", "unreadable_video",
                         "cannot read video", False),
    "missing_video": ({"id": "bad", "video": "gone.mp4", "conversations": conv()}, "video", "missing_file",
                      "missing file", False),
    "missing_conversations": ({"id": "bad", "image": "good.png"}, "conversations", "missing_key",
                              "missing key 'conversations'", True),
    "missing_value": ({"id": "bad", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt"}]},
                      "conversations[1].value", "missing_key", "missing key 'value'", True),
    "empty_conversation": ({"id": "bad", "conversations": []}, "conversations", "empty_conversation",
                           "empty conversation", True),
    "first_turn_gpt": ({"id": "bad", "conversations": conv()[::-1]}, "conversations[0].from", "first_turn_not_human",
                       "expected 'human'", True),
    "unknown_speaker": ({"id": "bad", "conversations": [{"from": "robot", "value": "x"}]}, "conversations[0].from",
                        "bad_value", "unknown speaker", True),
    "marker_mismatch": ({"id": "bad", "image": "good.png", "conversations": conv("<image> vs <image>?")}, "image",
                        "marker_mismatch", "text marks 2 <image>", True),
    "image_not_a_path": ({"id": "bad", "image": 3, "conversations": conv()}, "image", "bad_value",
                         "expected a path", True),
    "no_response": ({"id": "bad", "conversations": conv()[:1]}, "conversations", "no_response",
                    "no assistant response", False),
}


def _write(tmp_path: Path, media: Path, records: list) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return path


def _cfg(path: Path, media: Path, on_error: str = "raise", name: str = "lamm") -> dict:
    return {"name": name, "path": str(path), "root": str(media), "on_error": on_error}


def _assert_one_line(err: DataError, path: Path, sample_id: str, field: str, fragment: str) -> None:
    text = str(err)
    assert "\n" not in text
    assert text.startswith(f"data error in {path}")
    assert f"sample {sample_id!r}" in text and f"field {field!r}" in text and fragment in text


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_one_line(tok, media, tmp_path, case):
    record, field, reason, fragment, eager = CASES[case]
    path = _write(tmp_path, media, [GOOD, record])
    with pytest.raises(DataError) as info:
        ds = build_dataset(_cfg(path, media), SPECS, tok, PREFIX)
        assert not eager, "structural errors must be found when the dataset is built"
        assert ds[0] is not None
        ds[1]
    _assert_one_line(info.value, path, "bad", field, fragment)
    assert info.value.reason == reason


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_skipped_and_counted(tok, media, tmp_path, case):
    record, _, reason, _, eager = CASES[case]
    path = _write(tmp_path, media, [GOOD, record, GOOD])
    ds = build_dataset(_cfg(path, media, "skip"), SPECS, tok, PREFIX)
    items = [ds[i] for i in range(len(ds))]
    assert len(ds) == (2 if eager else 3)
    batch = build_collator(tok)(items)
    assert batch.ids == ["good", "good"]
    assert ds.skipped.counts() == {reason: 1}
    assert f"skipped 1 samples ({reason}=1)" in ds.skipped.summary()


def test_malformed_json_names_file_and_line(tok, media, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": "a", "conversations": []},\n  {"id": "b" "conversations": []}\n]\n')
    for on_error in ("raise", "skip"):  # a broken JSON array cannot be skipped past
        with pytest.raises(DataError) as info:
            build_dataset(_cfg(path, media, on_error), SPECS, tok, PREFIX)
        text = str(info.value)
        assert "\n" not in text and text.startswith(f"data error in {path} line 3: malformed JSON")


def test_malformed_jsonl_line(tok, media, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"id": "x", "conversations": [\n' + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(DataError) as info:
        build_dataset(_cfg(path, media), SPECS, tok, PREFIX)
    assert str(info.value).startswith(f"data error in {path} line 2: malformed JSON line")
    ds = build_dataset(_cfg(path, media, "skip"), SPECS, tok, PREFIX)
    assert len(ds) == 2 and ds.skipped.counts() == {"malformed_json": 1}


def test_missing_data_file(tok, media, tmp_path):
    with pytest.raises(DataError, match="file not found"):
        build_dataset(_cfg(tmp_path / "nope.json", media), SPECS, tok, PREFIX)


def test_mmgpt_and_interleaved_missing_keys(tok, media, tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Do it."}]))
    with pytest.raises(DataError) as info:
        build_dataset(_cfg(path, media, name="mmgpt"), SPECS, tok, PREFIX)
    _assert_one_line(info.value, path, "#0", "output", "missing key 'output'")
    doc = tmp_path / "docs.jsonl"
    doc.write_text(json.dumps({"id": "d", "text_list": ["a"], "image_info": [{"image_name": "good.png",
                                                                              "matched_text_index": 4}]}) + "\n")
    with pytest.raises(DataError) as info:
        build_dataset(_cfg(doc, media, name="interleaved"), SPECS, tok, PREFIX)
    _assert_one_line(info.value, doc, "d", "image_info[0].matched_text_index", "out of range")
    assert "line 1" in str(info.value)


def test_unsupported_modality(tok, media, tmp_path):
    path = _write(tmp_path, media, [{"id": "v", "video": "good.mp4", "conversations": conv()}])
    ds = build_dataset(_cfg(path, media), {"image": SPECS["image"]}, tok, PREFIX)
    with pytest.raises(DataError, match="no video encoder") as info:
        ds[0]
    assert info.value.reason == "unsupported_modality"


def test_skip_counts_survive_dataloader_workers(tok, media, tmp_path):
    bad = CASES["corrupt_image"][0]
    path = _write(tmp_path, media, [GOOD, bad, GOOD, bad, GOOD, dict(bad, id="bad2", image="nope.png")])
    ds = build_dataset(_cfg(path, media, "skip"), SPECS, tok, PREFIX)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=build_collator(tok))
    batches = [b for b in loader if b is not None]
    assert sum(len(b) for b in batches) == 3
    assert ds.skipped.counts() == {"corrupt_image": 2, "missing_file": 1}
    assert ds.skipped.summary() == "skipped 3 samples (corrupt_image=2, missing_file=1); truncated 0 samples"


def test_raise_in_worker_propagates(tok, media, tmp_path):
    path = _write(tmp_path, media, [GOOD, CASES["corrupt_image"][0]])
    ds = build_dataset(_cfg(path, media), SPECS, tok, PREFIX)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=build_collator(tok))
    batches = iter(loader)
    try:
        with pytest.raises(DataError, match="sample 'bad' field 'image': cannot read image"):
            next(batches)
    finally:
        batches._shutdown_workers()  # else the worker is reaped at exit after a 5 s join timeout


def test_webdataset_bad_member_skipped(tok, media, tmp_path):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for key, member, data in [("ok", "png", (media / "good.png").read_bytes()),
                                  ("bad", "png", b"garbage"),
                                  ("nojson", "png", (media / "good.png").read_bytes())]:
            for name, payload in ([(f"{key}.json", json.dumps({"conversations": conv()}).encode())]
                                  if key != "nojson" else []) + [(f"{key}.{member}", data)]:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    cfg = {"name": "webdataset", "path": str(shard), "on_error": "skip", "shuffle": False}
    ds = build_dataset(cfg, SPECS, tok, PREFIX)
    assert [s.id for s in ds] == ["ok"]
    assert ds.skipped.counts() == {"corrupt_image": 1, "missing_key": 1}
    with pytest.raises(DataError) as info:
        list(build_dataset({**cfg, "on_error": "raise"}, SPECS, tok, PREFIX))
    assert str(info.value) == (f"data error in {shard} sample 'bad' field 'png': cannot read image "
                               f"{shard}:bad.png (cannot identify image file)")


def _tiny_point_bert(**kw):
    from lamm.registry import ENCODERS

    return ENCODERS.build("point_bert", num_points=128, num_groups=8, group_size=8, width=32, depth=1, heads=2,
                          pointnet_dims=[16, 32, 64], **kw)


def test_real_point_bert_transform_takes_coloured_clouds(tok, media, tmp_path):
    from lamm.batch import MediaSpec
    from lamm.datasets.testing import write_points

    write_points(tmp_path / "rgb.ply", num_points=300, colors=True)
    write_points(tmp_path / "rgb.npy", num_points=300, colors=True, seed=1)  # LAMM-3D style [P, 6]
    path = _write(tmp_path, media, [{"id": "ply", "pcl": "rgb.ply", "conversations": conv()},
                                    {"id": "npy", "pcl": "rgb.npy", "conversations": conv()}])
    xyz_only, with_rgb = _tiny_point_bert(), _tiny_point_bert(extra_channels=3)
    for encoder, channels in ((xyz_only, 3), (with_rgb, 6)):
        specs = {"pointcloud": MediaSpec(encoder.transform, encoder.num_tokens())}
        ds = build_dataset({**_cfg(path, tmp_path)}, specs, tok, PREFIX)
        batch = build_collator(tok)([ds[0], ds[1]])
        assert batch.media["pointcloud"].data.shape == (2, 128, channels)
        assert encoder.eval()(batch.media["pointcloud"].data).shape == (2, 8, 32)


def test_real_point_bert_transform_bad_clouds_are_one_line_data_errors(tok, media, tmp_path):
    from lamm.batch import MediaSpec

    encoder = _tiny_point_bert(extra_channels=3)  # wants xyz + 3 channels; good.npy has only xyz
    specs = {"pointcloud": MediaSpec(encoder.transform, encoder.num_tokens())}
    path = _write(tmp_path, media, [{"id": "nan", "pcl": "nan.npy", "conversations": conv()},
                                    {"id": "xyz", "pointcloud": "good.npy", "conversations": conv()}])
    ds = build_dataset(_cfg(path, media), specs, tok, PREFIX)
    with pytest.raises(DataError) as info:
        ds[0]
    _assert_one_line(info.value, path, "nan", "pcl", "NaN/inf")
    assert "nan.npy" in str(info.value) and info.value.reason == "bad_pointcloud"
    with pytest.raises(DataError) as info:
        ds[1]
    _assert_one_line(info.value, path, "xyz", "pointcloud", "pointcloud transform rejected")
    assert "good.npy" in str(info.value) and "[P, 6], got [50, 3]" in str(info.value) and info.value.reason == "bad_media"
    skipping = build_dataset(_cfg(path, media, "skip"), specs, tok, PREFIX)
    assert [skipping[i] for i in range(2)] == [None, None]
    assert skipping.skipped.counts() == {"bad_pointcloud": 1, "bad_media": 1}


def test_transform_bug_is_not_a_data_error(tok, media, tmp_path):
    from lamm.batch import MediaSpec

    def buggy(img):
        return img.no_such_attribute

    path = _write(tmp_path, media, [GOOD])
    ds = build_dataset(_cfg(path, media, "skip"), {"image": MediaSpec(buggy, 4)}, tok, PREFIX)
    with pytest.raises(AttributeError) as info:  # a programming error is never skipped
        ds[0]
    assert any("while transforming image" in note and "'good'" in note for note in info.value.__notes__)


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_raise_in_workers_is_one_line(tok, media, tmp_path):
    records = [dict(GOOD, id=f"g{i}") for i in range(5)] + [CASES["corrupt_image"][0]] + [dict(GOOD, id="g9")]
    path = _write(tmp_path, media, records)
    ds = build_dataset(_cfg(path, media), SPECS, tok, PREFIX)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=build_collator(tok))
    batches = iter(loader)
    try:
        with pytest.raises(DataError) as info:
            for _ in batches:
                pass
    finally:
        batches._shutdown_workers()
    text = str(info.value)
    assert "\n" not in text and "Caught" not in text and "Traceback" not in text
    assert text == f"data error in {path} sample 'bad' field 'image': cannot read image {media / 'corrupt.png'} " \
                   "(cannot identify image file)"
    assert info.value.reason == "corrupt_image" and info.value.sample_id == "bad" and info.value.field == "image"
    # The same for a streamed dataset.
    shard = _tar(tmp_path / "s.tar", [("ok.json", json.dumps({"conversations": conv()}).encode()),
                                      ("ok.png", (media / "good.png").read_bytes()),
                                      ("bad.json", json.dumps({"conversations": conv()}).encode()),
                                      ("bad.png", b"garbage")])
    stream = build_dataset({"name": "webdataset", "path": str(shard), "shuffle": False}, SPECS, tok, PREFIX)
    batches = iter(torch.utils.data.DataLoader(stream, batch_size=2, num_workers=2, collate_fn=build_collator(tok)))
    try:
        with pytest.raises(DataError) as info:
            for _ in batches:
                pass
    finally:
        batches._shutdown_workers()
    assert str(info.value) == (f"data error in {shard} sample 'bad' field 'png': cannot read image "
                               f"{shard}:bad.png (cannot identify image file)")
