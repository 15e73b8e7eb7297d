"""The offline generator: determinism, valid LAMM JSON, and answers re-derived from the media."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial import cKDTree

from lamm.datasets.synth import DEFAULT_SIZES, FORMAT_VERSION, generate, main, parse_sizes, resolve_sizes
from lamm.datasets.synth.shapes import COLOURS, FOREGROUND_THRESHOLD

SIZES = {
    "shapes": {"train": 60, "test": 20},
    "video": {"train": 12, "test": 6},
    "points": {"train": 12, "test": 6},
    "digits": {"train": 30, "test": 10},
}
PALETTE = np.array(list(COLOURS.values()), dtype=float)
NAMES = list(COLOURS)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        root = tmp_path_factory.mktemp(name)
        generate(root, seed=seed, sizes=SIZES)
        out[name] = root
    return out


@pytest.fixture(scope="module")
def data(runs) -> dict[str, tuple[Path, list[dict]]]:
    """kind -> (kind folder, all samples of both splits)."""
    root = runs["a"]
    out = {}
    for kind in SIZES:
        rows = []
        for split in ("train", "test"):
            rows += json.loads((root / kind / f"{split}.json").read_text())
        out[kind] = (root / kind, rows)
    return out


def nearest_colour(rgb) -> str:
    return NAMES[int(np.argmin(((PALETTE - np.asarray(rgb, float)) ** 2).sum(1)))]


# ---------------------------------------------------------------- determinism and format


def test_same_seed_gives_identical_bytes(runs):
    a, b = tree_hashes(runs["a"]), tree_hashes(runs["b"])
    assert len(a) == sum(n for s in SIZES.values() for n in s.values()) + 9  # + 8 json + manifest
    assert a == b


def test_different_seed_gives_different_data(runs):
    a, c = tree_hashes(runs["a"]), tree_hashes(runs["c"])
    assert a.keys() == c.keys()
    for kind in ("shapes", "video", "points", "digits"):
        media = [k for k in a if k.startswith(kind + "/") and not k.endswith(".json")]
        assert sum(a[k] != c[k] for k in media) >= 0.9 * len(media), kind


def test_sample_i_and_test_split_do_not_depend_on_sizes(runs, tmp_path):
    generate(tmp_path, seed=0, sizes={"train": 7, "test": 20}, kinds=("shapes", "digits"))
    for kind in ("shapes", "digits"):
        small = json.loads((tmp_path / kind / "train.json").read_text())
        big = json.loads((runs["a"] / kind / "train.json").read_text())
        assert small == big[:7]
    assert (tmp_path / "shapes/test.json").read_bytes() == (runs["a"] / "shapes/test.json").read_bytes()
    digits_test = json.loads((tmp_path / "digits/test.json").read_text())
    assert digits_test[:10] == json.loads((runs["a"] / "digits/test.json").read_text())


def test_manifest(runs):
    m = json.loads((runs["a"] / "manifest.json").read_text())
    assert m["generator"] == "lamm.datasets.synth" and m["seed"] == 0
    assert list(m["kinds"]) == ["shapes", "video", "points", "digits"]
    for kind, entry in m["kinds"].items():
        assert entry["sizes"] == SIZES[kind]
        for split, rel in entry["files"].items():
            assert len(json.loads((runs["a"] / rel).read_text())) == SIZES[kind][split]
        for split in ("train", "test"):
            assert sum(t["counts"][split] for t in entry["tasks"].values()) == SIZES[kind][split]
    shapes = m["kinds"]["shapes"]["tasks"]
    for task in ("colour", "shape", "count"):
        assert shapes[task]["chance"] <= 0.35
    assert shapes["bbox"]["options"] == [] and shapes["bbox"]["chance"] is None


MEDIA_KEY = {"shapes": "image", "video": "video", "points": "pcl", "digits": "image"}


@pytest.mark.parametrize("kind", list(SIZES))
def test_json_is_valid_lamm_format(data, kind):
    folder, rows = data[kind]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        path = r[MEDIA_KEY[kind]]
        assert not Path(path).is_absolute() and (folder / path).exists(), r["id"]
        conv = r["conversations"]
        assert [c["from"] for c in conv] == ["human", "gpt"] * len(r["turn_tasks"])
        assert conv[0]["value"].strip() and conv[1]["value"] == r["answer"] and r["turn_tasks"][0] == r["task"]
        if kind not in ("shapes", "video") or r["id"].split("_")[1] == "test":  # evaluation asks one question each
            assert len(conv) == 2, r["id"]
        assert isinstance(r["task_type"], str) and isinstance(r["task"], str)
        if r["task"] == "bbox":
            assert r["options"] == []
        else:
            assert r["answer"] in r["options"] and len(set(r["options"])) == len(r["options"])
        assert isinstance(r["meta"], dict)
    tasks = {r["task"] for r in rows}
    expected = {
        "shapes": {"colour", "shape", "count", "position", "caption", "bbox"},
        "video": {"direction", "colour_change", "speed"},
        "points": {"class3d", "count3d", "size3d"},
        "digits": {"digit"},
    }[kind]
    assert tasks == expected


@pytest.mark.parametrize("kind", ["shapes", "video", "points"])
def test_answers_are_balanced_per_task(runs, kind):
    for split in ("train", "test"):
        rows = json.loads((runs["a"] / kind / f"{split}.json").read_text())
        for task in {r["task"] for r in rows if r["options"]}:
            answers = [r["answer"] for r in rows if r["task"] == task]
            counts = [answers.count(o) for o in rows[[r["task"] for r in rows].index(task)]["options"]]
            assert max(counts) - min(counts) <= 1, (kind, split, task, counts)


# ---------------------------------------------------------------- answers from the media


def shape_features(mask: np.ndarray) -> str:
    """Classify one shape's pixel mask from its fill ratio, aspect and top/bottom widths."""
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = mask.sum() / (h * w)
    rows = mask[ys.min():ys.max() + 1].sum(1)
    if fill > 0.9:
        return "square"
    if fill > 0.7:
        return "circle"
    if fill < 0.48:
        return "star"
    k = max(1, h // 5)
    return "triangle" if rows[:k].mean() < 0.22 * rows[-k:].mean() else "cross"  # narrow top, wide base


def test_shapes_answers_match_pixels(data):
    folder, rows = data["shapes"]
    for r in rows:
        img = np.asarray(Image.open(folder / r["image"]).convert("RGB"))
        size = img.shape[1]
        fg = img.max(axis=2) > FOREGROUND_THRESHOLD
        labels, n = ndimage.label(fg)
        objs = r["meta"]["objects"]
        assert n == len(objs), r["id"]
        for o in objs:
            cx, cy = o["centre"]
            assert nearest_colour(img[cy, cx]) == o["colour"], r["id"]
            comp = labels == labels[cy, cx]
            ys, xs = np.nonzero(comp)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == o["box"], r["id"]
            assert shape_features(comp) == o["shape"], (r["id"], o["shape"])
        first = objs[0]
        side = "left" if np.nonzero(fg)[1].mean() < size / 2 else "right"
        for task, ans in zip(r["turn_tasks"], [c["value"] for c in r["conversations"][1::2]]):
            check_shapes_answer(task, ans, n, first, side, fg, size)


def test_shapes_training_images_ask_followups(data):
    """Every training image also asks colour and shape, single-shape scenes left/right; count only first."""
    _, rows = data["shapes"]
    train = [r for r in rows if r["id"].startswith("shapes_train")]
    for r in train:
        asked = r["turn_tasks"]
        assert len(asked) == len(set(asked)) and {"colour", "shape"} <= set(asked), r["id"]
        assert "count" not in asked[1:] and ("position" in asked) == (r["task"] != "count"), r["id"]
    for task in ("colour", "shape", "position"):
        answers = {c["value"] for r in train for t, c in zip(r["turn_tasks"], r["conversations"][1::2]) if t == task}
        assert answers == set(train[[r["task"] for r in train].index(task)]["options"]), task


def check_shapes_answer(task: str, ans: str, n: int, first: dict, side: str, fg: np.ndarray, size: int) -> None:
    """One answer re-derived from the pixels (n connected shapes, the first object, its side)."""
    if task == "count":
        assert ans == str(n)
    elif task == "colour":
        assert ans == first["colour"]
    elif task == "shape":
        assert ans == first["shape"]
    elif task == "position":
        assert ans == side
    elif task == "caption":
        assert ans == f"a {first['colour']} {first['shape']} on the {side}"
    elif task == "bbox":
        m = re.fullmatch(r"(\w+) (\w+) \[([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)\]", ans)
        assert m, ans
        assert (m[1], m[2]) == (first["colour"], first["shape"])
        ys, xs = np.nonzero(fg)
        truth = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / size
        assert np.abs(np.array([float(m[i]) for i in range(3, 7)]) - truth).max() <= 0.0051


def test_video_answers_match_decoded_frames(data):
    from lamm.datasets.synth.video import read_video

    folder, rows = data["video"]
    for r in rows:
        frames = read_video(folder / r["video"])
        meta = r["meta"]
        assert len(frames) == meta["frames"] and frames[0].shape == (meta["image_size"],) * 2 + (3,)
        centroids, colours = [], []
        for f in frames:
            fg = f.max(axis=2) > FOREGROUND_THRESHOLD
            ys, xs = np.nonzero(fg)
            centroids.append((xs.mean(), ys.mean()))
            colours.append(nearest_colour(np.median(f[fg], axis=0)))
        dx, dy = np.subtract(centroids[-1], centroids[0])
        direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        speed = "fast" if np.hypot(dx, dy) / (len(frames) - 1) > 3.25 * meta["image_size"] / 64 else "slow"
        assert colours == meta["colours"], r["id"]
        expected = {
            "direction": direction,
            "speed": speed,
            "colour_change": "yes" if colours[0] != colours[-1] else "no",
        }
        asked = [(t, c["value"]) for t, c in zip(r["turn_tasks"], r["conversations"][1::2])]
        assert asked == [(t, expected[t]) for t in r["turn_tasks"]], r["id"]
        assert len(asked) == (3 if r["id"].startswith("video_train") else 1), r["id"]
        assert direction == meta["direction"] and speed == meta["speed"], r["id"]


def test_points_answers_match_clouds(data):
    from lamm.datasets.synth.points import PRIMITIVES, sample_cloud

    folder, rows = data["points"]
    for r in rows:
        cloud = np.load(folder / r["pcl"])
        assert cloud.dtype == np.float32 and cloud.shape == (r["meta"]["num_points"], 3)
        objs = r["meta"]["objects"]
        clusters = fcluster(linkage(cloud, "single"), t=0.5, criterion="distance")
        assert clusters.max() == len(objs), r["id"]
        if r["task"] == "count3d":
            assert r["answer"] == str(clusters.max())
        elif r["task"] == "size3d":
            groups = [cloud[clusters == c] for c in (1, 2)]
            groups.sort(key=lambda g: g[:, 0].mean())
            extent = [np.linalg.norm(g.max(0) - g.min(0)) for g in groups]
            assert r["answer"] == ("left" if extent[0] > extent[1] else "right"), r["id"]
        elif r["task"] == "class3d":
            # The recorded primitive must explain the points better than any other primitive in the same pose.
            errors = {}
            for name in PRIMITIVES:
                ref = sample_cloud([{**objs[0], "type": name}], 8000, seed=123)
                errors[name] = cKDTree(ref).query(cloud)[0].mean()
            assert min(errors, key=errors.get) == r["answer"] == objs[0]["type"], (r["id"], errors)


def test_digits_match_sklearn(data):
    from sklearn.datasets import load_digits

    from lamm.datasets.synth.digits import render

    d = load_digits()
    folder, rows = data["digits"]
    seen = set()
    for r in rows:
        j = r["meta"]["sklearn_index"]
        assert j not in seen  # train and test never share a digit image
        seen.add(j)
        assert r["answer"] == str(d.target[j])
        img = np.asarray(Image.open(folder / r["image"]))
        assert img.shape == (64, 64, 3) and np.array_equal(img, render(d.images[j], 64))


def test_digits_sizes_are_capped_at_the_real_data(tmp_path):
    m = generate(tmp_path, seed=0, sizes={"digits.train": 5000, "digits.test": 397}, kinds=("digits",))
    assert m["kinds"]["digits"]["sizes"] == {"train": 1400, "test": 397}


# ---------------------------------------------------------------- API and CLI


def test_sizes_parsing():
    assert parse_sizes("train=2000, test=200,shapes.train=5") == {"train": 2000, "test": 200, "shapes.train": 5}
    with pytest.raises(ValueError, match="SPLIT=N"):
        parse_sizes("train:20")
    got = resolve_sizes({"test": 3, "shapes.train": 5, "video": {"train": 2}}, ("shapes", "video"))
    assert got == {"shapes": {"train": 5, "test": 3}, "video": {"train": 2, "test": 3}}
    assert resolve_sizes(None, ("points",)) == {"points": DEFAULT_SIZES["points"]}
    with pytest.raises(ValueError, match="unknown split"):
        resolve_sizes({"val": 3}, ("shapes",))


def test_cli_runs_and_reruns_in_place(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--seed", "3", "--size", "train=4,test=2", "--kinds", "shapes,points"]
    assert main(args) == 0
    first = tree_hashes(tmp_path)
    assert main(args) == 0  # a folder this generator wrote is replaced, not refused
    assert tree_hashes(tmp_path) == first
    assert main(["--out", str(tmp_path), "--size", "train=2,test=1", "--kinds", "digits"]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert list(m["kinds"]) == ["shapes", "points", "digits"] and m["seed"] is None
    assert "wrote" in capsys.readouterr().out


def test_cli_refuses_foreign_folder_and_bad_kinds(tmp_path, capsys):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "mine.txt").write_text("keep me")
    assert main(["--out", str(tmp_path), "--size", "train=1,test=1", "--kinds", "shapes"]) == 2
    assert (tmp_path / "shapes" / "mine.txt").read_text() == "keep me"
    assert "not written by" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--kinds", "shapes,clouds"])


def test_lamm_train_regenerates_data_written_with_other_sizes(tmp_path):
    """lamm-train's data step: reuse a folder with the asked sizes, regenerate one written with others."""
    from lamm.cli.train import ensure_synthetic_data

    root = tmp_path / "synth-0"
    small = {"kinds": ["shapes"], "seed": 0, "sizes": {"train": 8, "test": 4}}
    ensure_synthetic_data(root, small)
    first = (root / "manifest.json").stat().st_mtime_ns
    ensure_synthetic_data(root, small)
    assert (root / "manifest.json").stat().st_mtime_ns == first  # same sizes: untouched
    ensure_synthetic_data(root, {**small, "sizes": {"train": 12, "test": 4}})
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["kinds"]["shapes"]["sizes"] == {"train": 12, "test": 4}
    assert len(json.loads((root / "shapes" / "train.json").read_text())) == 12


def test_lamm_train_regenerates_data_of_an_older_format(tmp_path):
    from lamm.cli.train import ensure_synthetic_data

    root = tmp_path / "synth-0"
    small = {"kinds": ["shapes"], "seed": 0, "sizes": {"train": 8, "test": 4}}
    ensure_synthetic_data(root, small)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["kinds"]["shapes"]["format_version"] = 1  # as an earlier release wrote it
    (root / "manifest.json").write_text(json.dumps(manifest))
    ensure_synthetic_data(root, small)
    assert json.loads((root / "manifest.json").read_text())["kinds"]["shapes"]["format_version"] == FORMAT_VERSION
