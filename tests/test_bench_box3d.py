"""3D detection: LAMM's Detection_ScanNet adapter, 3D box parsing, 3D IoU and mAP@0.5, by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lamm.benchmarks.adapters import ScenarioDataError
from lamm.benchmarks.box3d import box_iou, mean_average_precision
from lamm.benchmarks.build import build_scenario
from lamm.benchmarks.metrics import DetectionMAP
from lamm.benchmarks.parsing import parse_boxes
from lamm.datasets.media import load_media

UNIT = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def rec(raw, answer, sid="r"):
    return {"id": sid, "raw": raw, "answer": answer, "options": [], "labels": [], "extra": {}, "task": "detection"}


@pytest.fixture()
def scannet_root(tmp_path):
    """LAMM's 3D_Benchmark layout: meta_file/Detection_ScanNet.json, point clouds under scannet_pcls/."""
    root = tmp_path / "3D_Benchmark"
    (root / "meta_file").mkdir(parents=True)
    (root / "scannet_pcls").mkdir()
    pts = np.random.default_rng(0).uniform(0, 4, size=(128, 6)).astype(np.float32)  # xyz + rgb
    np.save(root / "scannet_pcls" / "scene0000_00.npy", pts)
    rows = [{"id": "scene0000_00", "pcl": "scannet_pcls/scene0000_00.npy",
             "query": "Find every chair and table in the scene.",
             "object": [{"label": "chair", "bbox": [0, 0, 0, 1, 1, 1]},
                        {"label": "table", "bbox": [1.5, 0.5, 0, 3, 2, 0.8]}]}]
    (root / "meta_file" / "Detection_ScanNet.json").write_text(json.dumps(rows))
    return root


def _scan(root):
    return build_scenario({"name": "lamm_bench", "root": str(root), "task": "Detection", "dataset": "ScanNet"})


def test_lamm_bench_detection_scannet(scannet_root) -> None:
    scenario = _scan(scannet_root)
    (s,) = scenario.samples()
    assert scenario.modality == "pointcloud" and s.task == "detection"
    assert s.question == "Find every chair and table in the scene."
    assert s.answer == [["chair", *UNIT], ["table", 1.5, 0.5, 0.0, 3.0, 2.0, 0.8]] and s.options == []
    assert s.media[0].modality == "pointcloud"
    assert s.media[0].path == str(scannet_root / "scannet_pcls" / "scene0000_00.npy")
    assert load_media(s.media[0]).shape == (128, 6)


def test_lamm_bench_detection_bad_box_one_line(scannet_root) -> None:
    meta = scannet_root / "meta_file" / "Detection_ScanNet.json"
    meta.write_text(json.dumps([{"id": "scene0001_00", "pcl": "scannet_pcls/scene0000_00.npy",
                                 "object": [{"label": "sofa", "bbox": [0, 0, 0, 1, 1]}]}]))
    with pytest.raises(ScenarioDataError) as err:
        _scan(scannet_root).samples()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{meta} sample 'scene0001_00': field 'bbox' of object 'sofa' must hold 4 numbers")
    assert msg.endswith("found 5 numbers")
    meta.write_text(json.dumps([{"id": "a", "pcl": "p.npy", "object": [{"label": "x", "bbox": UNIT}]},
                                {"id": "b", "pcl": "p.npy", "object": [{"label": "y", "bbox": [0, 0, 1, 1]}]}]))
    with pytest.raises(ScenarioDataError, match=r"sample 'b': field 'bbox' mixes 2D and 3D .*'b' has 4.*'a' has 6"):
        _scan(scannet_root).samples()


def test_parse_boxes_3d() -> None:
    assert parse_boxes("chair [0, 0, 0, 1, 1, 1.5], table: (1.5, 0.5, 0, 3, 2, 0.8)") == [
        ["chair", 0.0, 0.0, 0.0, 1.0, 1.0, 1.5], ["table", 1.5, 0.5, 0.0, 3.0, 2.0, 0.8]]
    assert parse_boxes("red circle [0.1, 0.2, 0.5, 0.6] and chair [0, 0, 0, 1, 1, 1]") == [
        ["red circle", 0.1, 0.2, 0.5, 0.6], ["chair", *UNIT]]  # 2D parsing unchanged beside a 3D box
    assert parse_boxes("chair [0, 0, 0, 1, 1]") is None  # 5 numbers: not a box
    assert parse_boxes("chair [0, 0, 2, 1, 1, 1]") is None  # z2 < z1: dropped


def test_box_iou_3d_by_hand() -> None:
    shifted = [0.5, 0.0, 0.0, 1.5, 1.0, 1.0]
    # Two unit cubes overlapping by half along x: inter 0.5, union 1 + 1 - 0.5 = 1.5 -> IoU 1/3.
    assert box_iou(np.array([UNIT]), np.array([shifted]))[0, 0] == pytest.approx(1 / 3)
    # Vectorised (2, 6) x (3, 6): identical -> 1, disjoint -> 0, unit cube inside the 2-cube -> 1/8.
    iou = box_iou(np.array([UNIT, [0, 0, 0, 2, 2, 2]]), np.array([UNIT, [5, 5, 5, 6, 6, 6], shifted]))
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou, [[1, 0, 1 / 3], [1 / 8, 0, 1 / 8]])
    assert box_iou(np.zeros((0, 6)), np.array([UNIT])).shape == (0, 1)


# Two scenes, four ground-truth boxes; the k-th box of an answer scores 1/(1+k).
GT1 = [["chair", *UNIT], ["chair", 3, 0, 0, 4, 1, 1]]
GT2 = [["chair", *UNIT], ["table", 2, 0, 0, 3, 1, 1]]
RAW1 = "chair [0, 0, 0, 1, 1, 1] chair [5, 5, 5, 6, 6, 6] lamp [8, 8, 8, 9, 9, 9]"
RAW2 = "chair [0.5, 0, 0, 1.5, 1, 1] table [2, 0, 0, 3, 1, 1]"


def test_map50_3d_by_hand() -> None:
    rs = [rec(RAW1, GT1, "s1"), rec(RAW2, GT2, "s2")]
    # chair (3 gt): ranked s1#0 (score 1, IoU 1: TP), s2#0 (score 1, tie keeps record order; IoU 1/3: FP),
    # s1#1 (score 1/2, no overlap: FP) -> precision 1, 1/2, 1/3 at recall 1/3, 1/3, 1/3. Interpolated
    # precision is 1 at the 34 recall points 0, .01, ..., .33 and 0 above -> AP = 34/101.
    # table (1 gt): one TP -> AP 1. lamp has no ground truth: left out. mAP = (34/101 + 1) / 2.
    assert DetectionMAP().compute(rs)["map50"] == pytest.approx((34 / 101 + 1) / 2)
    # class_agnostic (4 gt): s1#0 TP, s2#0 FP, then score 1/2: s1#1 FP, s2#1 TP (the table), s1#2 FP at 1/3
    # -> recall .25 .25 .25 .5 .5; precision after the running max from the right: 1, .5, .5, .5, .4.
    # 26 points 0..0.25 at 1, 25 points .26...50 at .5, 0 above -> AP = (26 + 12.5) / 101.
    assert DetectionMAP(class_agnostic=True).compute(rs)["map50"] == pytest.approx(38.5 / 101)
    perfect = "chair [0, 0, 0, 1, 1, 1] table [2, 0, 0, 3, 1, 1]"
    assert DetectionMAP().compute([rec(perfect, GT2)])["map50"] == pytest.approx(1.0)
    assert DetectionMAP().compute([rec("chair [0, 0, 1, 1]", GT2)])["map50"] == 0.0  # a 2D box is no 3D box
    assert DetectionMAP().judge(rec(perfect, GT2)) and not DetectionMAP().judge(rs[1])
    assert DetectionMAP().parse(rec("chair [0, 0, 1, 1] chair [0, 0, 0, 1, 1, 1]", GT2)) == [["chair", *UNIT]]


def test_map50_rejects_mixed_and_bad_boxes() -> None:
    rs = [rec("", [["dog", 0, 0, 1, 1]], "img1"), rec("", [["chair", *UNIT]], "scene1")]
    with pytest.raises(ValueError, match=r"mix 2D and 3D .*'img1' has 4 numbers, sample 'scene1' has 6"):
        DetectionMAP().compute(rs)
    with pytest.raises(ValueError, match="sample 'x' has a ground-truth box of 5 numbers"):
        DetectionMAP().compute([rec("", [["dog", 0, 0, 0, 1, 1]], "x")])


def test_box3d_ap_equals_coco_on_2d() -> None:
    """The 3D code is dimension-generic: on 2D boxes it must give pycocotools' mAP@0.5 (via torchmetrics,
    told to use COCO's float64 recall points; its default float32 points, 0.6 -> 0.60000002, miss a recall
    of exactly 3/5)."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    values = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        preds, targets, tm_preds, tm_targets = [], [], [], []
        for _ in range(rng.integers(1, 8)):  # images: integer boxes, detections jittered copies of the truth
            m = int(rng.integers(0, 5))
            lo = rng.integers(0, 10, size=(m, 2))
            gt = np.concatenate([lo, lo + rng.integers(2, 6, size=(m, 2))], axis=1).astype(np.float64)
            gl = rng.integers(0, 3, size=m)
            n = int(rng.integers(0, 8)) if m else 0
            src = rng.integers(0, max(m, 1), size=n)
            pb = gt[src] + rng.integers(-1, 2, size=(n, 4))
            pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
            pl = np.where(rng.random(n) < 0.8, gl[src], rng.integers(0, 3, size=n))
            ps = 1.0 / (1 + np.arange(n))
            preds.append((pb, ps, pl))
            targets.append((gt, gl))
            tm_preds.append({"boxes": torch.tensor(pb, dtype=torch.float32).reshape(-1, 4),
                             "scores": torch.tensor(ps, dtype=torch.float32), "labels": torch.tensor(pl)})
            tm_targets.append({"boxes": torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
                               "labels": torch.tensor(gl)})
        ref = MeanAveragePrecision(box_format="xyxy", iou_thresholds=[0.5],
                                   rec_thresholds=np.linspace(0, 1, 101).tolist())
        ref.update(tm_preds, tm_targets)
        expected = float(ref.compute()["map"])
        got = mean_average_precision(preds, targets)
        if expected == -1.0:  # no ground truth at all: pycocotools says -1, box3d NaN
            assert math.isnan(got)
            continue
        assert got == pytest.approx(expected, abs=1e-6), seed
        values.append(expected)
    assert len(values) >= 15 and 0.1 < np.mean(values) < 0.9  # informative cases, not all 0 or 1
