"""Scenario adapters, each on tiny files written here in the real on-disk format."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from lamm.benchmarks.adapters import ScenarioDataError
from lamm.benchmarks.build import build_scenario
from lamm.datasets.media import load_media
from lamm.datasets.synth import generate
from lamm.registry import SCENARIOS


def _png(path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def _png_bytes(colour=(0, 0, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def lamm_root(tmp_path):
    root = tmp_path / "LAMM"
    meta = root / "meta_file"
    meta.mkdir(parents=True)
    for name in ("sqa/1.png", "cifar/1.png", "flickr/1.jpg", "voc/1.jpg", "fsc/1.jpg", "svt/1.jpg"):
        _png(root / name)
    np.save(root / "scan.npy", np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))
    files = {
        "VQA_ScienceQA": [{"id": "sqa1", "image": "sqa/1.png", "query": "Which is a mammal?",
                           "gt_choice": 1, "gt_choices": ["shark", "whale", "trout"]}],
        "Classification_CIFAR10": [{"id": "c1", "image": "cifar/1.png", "label": "cat"}],
        "Caption_flickr30k": [{"id": "f1", "image": "flickr/1.jpg", "sentences": ["A dog runs.", "A dog on grass."]}],
        "Detection_VOC2012": [{"id": "v1", "image": "voc/1.jpg",
                               "object": [{"label": "dog", "bbox": [1, 2, 10, 12]}, {"label": "cat", "bbox": [0, 0, 4, 4]}]}],
        "Counting_FSC147": [{"id": "n1", "image": "fsc/1.jpg", "num": 12}],
        "OCR_SVT": [{"id": "o1", "image": "svt/1.jpg", "word_list": ["HOTEL", "PARK"]}],
        "VQA3D_ScanQA": [{"id": "s1", "pcl": "scan.npy", "query": "What colour is the chair?", "answers": ["red", "dark red"]}],
        "Classification3D_ScanNet": [{"id": "p1", "pcl": "scan.npy", "label": "chair"},
                                     {"id": "p2", "pcl": "scan.npy", "label": "table"}],
    }
    for name, rows in files.items():
        (meta / f"{name}.json").write_text(json.dumps(rows))
    return root


def _one(root, task, dataset, **kw):
    return build_scenario({"name": "lamm_bench", "root": str(root), "task": task, "dataset": dataset, **kw}).samples()


def test_lamm_bench_every_task(lamm_root) -> None:
    (s,) = _one(lamm_root, "VQA", "ScienceQA")
    assert (s.question, s.options, s.answer, s.extra["choice_style"]) == (
        "Which is a mammal?", ["shark", "whale", "trout"], "whale", "letters")
    assert s.media[0].path == str(lamm_root / "sqa/1.png") and load_media(s.media[0]).size == (16, 16)
    (s,) = _one(lamm_root, "Classification", "CIFAR10")
    assert s.answer == "cat" and len(s.options) == 10 and "truck" in s.options
    (s,) = _one(lamm_root, "Caption", "flickr30k")
    assert s.options == [] and s.answer == ["A dog runs.", "A dog on grass."]
    (s,) = _one(lamm_root, "Detection", "VOC2012")
    assert s.answer == [["dog", 1.0, 2.0, 10.0, 12.0], ["cat", 0.0, 0.0, 4.0, 4.0]]
    (s,) = _one(lamm_root, "Counting", "FSC147")
    assert s.answer == 12.0 and s.task == "counting"
    (s,) = _one(lamm_root, "OCR", "SVT")
    assert s.answer == ["HOTEL", "PARK"]
    (s,) = _one(lamm_root, "VQA3D", "ScanQA")
    assert s.media[0].modality == "pointcloud" and s.answer == ["red", "dark red"] and s.options == []
    assert load_media(s.media[0]).shape == (64, 3)
    scan = _one(lamm_root, "Classification3D", "ScanNet")
    assert [x.answer for x in scan] == ["chair", "table"] and scan[0].options == ["chair", "table"]


def test_lamm_bench_missing_meta_names_expected_path(lamm_root) -> None:
    with pytest.raises(ScenarioDataError) as err:
        _one(lamm_root, "VQA", "AI2D")
    msg = str(err.value)
    assert "\n" not in msg and str(lamm_root / "meta_file" / "VQA_AI2D.json") in msg


def test_lamm_bench_bad_field_named(lamm_root) -> None:
    (lamm_root / "meta_file" / "VQA_ScienceQA.json").write_text(json.dumps([{"id": "x", "image": "a.png", "query": "q",
                                                                            "gt_choice": 5, "gt_choices": ["a"]}]))
    with pytest.raises(ScenarioDataError, match="sample 'x': gt_choice 5 out of range"):
        _one(lamm_root, "VQA", "ScienceQA")


def test_mmbench_tsv_circular(tmp_path) -> None:
    img = base64.b64encode(_png_bytes()).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
    rows = [f"7\tWhat colour?\tnan\tred\tblue\tgreen\t\tB\tcolour\t{img}\n",
            f"8\tWhich shape?\tLook closely.\tcircle\tsquare\t\t\tA\tshape\t{img}\n"]
    path = tmp_path / "mmbench_dev_en.tsv"
    path.write_text(header + "".join(rows))
    out = build_scenario({"name": "mmbench", "path": str(path)}).samples()
    assert [s.id for s in out] == ["7|r0", "7|r1", "7|r2", "8|r0", "8|r1"]
    assert out[1].options == ["blue", "green", "red"] and all(s.answer == "blue" for s in out[:3])
    assert out[3].question == "Look closely.\nWhich shape?" and out[3].extra["circular_group"] == "8"
    assert load_media(out[0].media[0]).getpixel((0, 0)) == (0, 0, 255)
    assert len(build_scenario({"name": "mmbench", "path": str(path), "circular": False}).samples()) == 2


def test_pope_files(tmp_path) -> None:
    _png(tmp_path / "img" / "a.jpg")
    lines = [{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"},
             {"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"}]
    (tmp_path / "coco_pope_popular.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = build_scenario({"name": "pope", "root": str(tmp_path), "negatives": "popular",
                          "image_root": str(tmp_path / "img")}).samples()
    assert [(s.id, s.answer, s.options) for s in out] == [("1", "yes", ["yes", "no"]), ("2", "no", ["yes", "no"])]
    with pytest.raises(ScenarioDataError, match="pope_adversarial.json"):
        build_scenario({"name": "pope", "root": str(tmp_path), "negatives": "adversarial"}).samples()


def test_seed_bench_json(tmp_path) -> None:
    _png(tmp_path / "images" / "x.jpg")
    data = {"question_type": {"Scene Understanding": 1},
            "questions": [{"question_id": "101", "question": "What is shown?", "choice_a": "a", "choice_b": "b",
                           "choice_c": "c", "choice_d": "d", "answer": "C", "data_id": "x.jpg", "data_type": "image",
                           "question_type_id": 1},
                          {"question_id": "102", "question": "Video?", "choice_a": "a", "choice_b": "b",
                           "answer": "A", "data_id": "v.mp4", "data_type": "video", "question_type_id": 1}]}
    (tmp_path / "SEED-Bench.json").write_text(json.dumps(data))
    (s,) = build_scenario({"name": "seed_bench", "path": str(tmp_path / "SEED-Bench.json"),
                           "image_root": str(tmp_path / "images")}).samples()
    assert (s.id, s.options, s.answer, s.task) == ("101", ["a", "b", "c", "d"], "c", "Scene Understanding")


def test_json_qa_text_only(tmp_path) -> None:
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"id": "q1", "question": "2+2?", "options": ["3", "4"], "answer": "4"}) + "\n")
    (s,) = build_scenario({"name": "json_qa", "path": str(p)}).samples()
    assert s.media == [] and s.answer == "4"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=0, sizes={"train": 8, "test": 16}, kinds=("shapes", "digits"))
    return root


def test_synth_scenarios(synth_root) -> None:
    shapes = build_scenario({"name": "synth_shapes", "root": str(synth_root)}).samples()
    assert len(shapes) == 16 and shapes[0].media[0].modality == "image"
    by_task = {s.task: s for s in shapes}
    assert by_task["caption"].options == [] and isinstance(by_task["caption"].answer, list)
    box = by_task["bbox"].answer[0]
    assert len(box) == 5 and all(0 <= v <= 1 for v in box[1:])
    assert by_task["colour"].answer in by_task["colour"].options
    digits = build_scenario({"name": "synth_digits", "root": str(synth_root), "limit": 3}).samples()
    assert len(digits) == 3 and digits[0].options == [str(i) for i in range(10)]
    assert {"synth_video", "synth_points"} <= set(SCENARIOS.names())


def test_synth_generates_missing(tmp_path) -> None:
    scen = build_scenario({"name": "synth_shapes", "root": str(tmp_path / "new"), "sizes": {"train": 2, "test": 3}})
    assert len(scen.samples()) == 3 and len(scen.support()) == 2
    with pytest.raises(FileNotFoundError, match="test.json"):
        build_scenario({"name": "synth_shapes", "root": str(tmp_path / "none"), "generate": False}).samples()


@pytest.mark.parametrize("negatives", ["random", "popular", "adversarial"])
def test_synth_pope(synth_root, negatives: str) -> None:
    out = build_scenario({"name": "synth_pope", "root": str(synth_root), "negatives": negatives}).samples()
    assert [s.answer for s in out[:4]] == ["yes", "no", "yes", "no"]
    base = {s.id: s for s in build_scenario({"name": "synth_shapes", "root": str(synth_root)}).samples()}
    for s in out:
        present = {(o["colour"], o["shape"]) for o in base[s.id.split("|")[0]].extra["meta"]["objects"]}
        asked = tuple(s.extra["object"])
        assert (asked in present) == (s.answer == "yes")
        assert s.question == f"Is there a {asked[0]} {asked[1]} in the image?"
        if negatives == "adversarial" and s.answer == "no":
            assert any(asked[0] == c or asked[1] == sh for c, sh in present)


def test_corrupted_copies(synth_root) -> None:
    scen = build_scenario({"name": "corrupted", "corruptions": ["image", "text", "both"],
                           "scenario": {"name": "synth_shapes", "root": str(synth_root), "limit": 2,
                                        "tasks": ["colour", "shape"]}})
    out = scen.samples()
    assert [s.id.split("|")[1] for s in out[:4]] == ["clean", "image", "text", "both"]
    clean, img, txt, both = out[:4]
    assert img.question == clean.question and txt.media == clean.media and txt.question != clean.question
    a = np.asarray(load_media(clean.media[0]), dtype=float)
    b = np.asarray(load_media(img.media[0]), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() > 5
    # Seeded by sample id: the same copies every time.
    again = scen.samples()
    assert again[1].media[0].data == img.media[0].data and again[2].question == txt.question


def test_synth_video_and_points(tmp_path) -> None:
    generate(tmp_path, seed=0, sizes={"train": 1, "test": 3}, kinds=("video", "points"))
    video = build_scenario({"name": "synth_video", "root": str(tmp_path)})
    points = build_scenario({"name": "synth", "root": str(tmp_path), "kinds": ["points"]})
    assert video.modality == "video" and points.modality == "pointcloud"
    v, p = video.samples()[0], points.samples()[0]
    assert v.answer in v.options and p.answer in p.options
    assert load_media(v.media[0]).ndim == 4 and load_media(p.media[0]).shape[1] == 3
