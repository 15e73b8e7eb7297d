"""Axis-aligned box IoU and COCO-style mean average precision, for the 3D boxes of `map50`.

torchmetrics' MeanAveragePrecision (the 2D path of `map50`) has no 3D boxes, so this follows the same
COCO conventions (pycocotools' evaluateImg + accumulate) for boxes given as min corner then max corner
(`[x1, y1, z1, x2, y2, z2]`; any even length works, 4 = 2D):

- per image and class, detections are taken by descending score (stable: ties keep the answer's
  order), at most `max_dets`; each is matched to the not yet matched ground-truth box of highest IoU
  if that IoU >= the threshold (the later box on equal IoU, as pycocotools), else it is a false positive;
- per class, the detections of all images are ranked by score (stable: ties keep image order),
  precision is made non-increasing (running max from the right) and read at the 101 recall points
  0, 0.01, ..., 1 (0 past the recall reached); AP is the mean of those 101 values;
- classes without ground truth are left out (their detections count nowhere); mAP is the mean AP
  over the classes with ground truth, NaN if there are none.

On 2D boxes this equals pycocotools (tested through torchmetrics). The recall points are pycocotools'
float64 `linspace(0, 1, 101)`; torchmetrics' default points are float32 (0.6 -> 0.60000002), so where a
class's recall lands exactly on a point (3 of 5 boxes found), the 2D path reads the next point instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N, 2d) with every box of `b` (M, 2d) -> (N, M); 0 where the union is empty."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] % 2:
        raise ValueError(f"box_iou: expected (N, 2d) and (M, 2d) boxes, found shapes {a.shape} and {b.shape}")
    d = a.shape[1] // 2
    sides = np.minimum(a[:, None, d:], b[None, :, d:]) - np.maximum(a[:, None, :d], b[None, :, :d])
    inter = np.clip(sides, 0.0, None).prod(axis=-1)
    vol_a, vol_b = (a[:, d:] - a[:, :d]).prod(axis=-1), (b[:, d:] - b[:, :d]).prod(axis=-1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match(boxes: np.ndarray, gt: np.ndarray, threshold: float) -> np.ndarray:
    """True for each detection (already in score order) matched to a ground-truth box of this image."""
    iou = box_iou(boxes, gt)
    taken = np.zeros(len(gt), dtype=bool)
    hit = np.zeros(len(boxes), dtype=bool)
    for i in range(len(boxes)):
        free = np.flatnonzero(~taken & (iou[i] >= threshold))
        if free.size:
            j = free[np.flatnonzero(iou[i, free] == iou[i, free].max())[-1]]
            taken[j] = hit[i] = True
    return hit


def average_precision(scores: np.ndarray, hits: np.ndarray, n_gt: int) -> float:
    """COCO 101-point interpolated AP of ranked detections (`hits`: true positive or not), n_gt > 0."""
    if not len(scores):
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(hits, dtype=bool)[order]
    tp, fp = np.cumsum(hits, dtype=np.float64), np.cumsum(~hits, dtype=np.float64)
    recall = tp / n_gt
    precision = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


def mean_average_precision(preds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                           targets: Sequence[tuple[np.ndarray, np.ndarray]],
                           iou_threshold: float = 0.5, max_dets: int = 100) -> float:
    """mAP over images: `preds[i] = (boxes (n, 2d), scores (n,), labels (n,))`, `targets[i] = (boxes (m, 2d),
    labels (m,))`, labels integer class ids."""
    if len(preds) != len(targets):
        raise ValueError(f"mean_average_precision: {len(preds)} predictions for {len(targets)} targets")
    classes = sorted({int(c) for _, labels in targets for c in np.asarray(labels).tolist()})
    aps = []
    for c in classes:
        scores, hits, n_gt = [], [], 0
        for (boxes, conf, labels), (gt, gt_labels) in zip(preds, targets):
            g = np.asarray(gt)[np.asarray(gt_labels) == c]
            n_gt += len(g)
            conf = np.asarray(conf, dtype=np.float64)
            sel = np.flatnonzero(np.asarray(labels) == c)
            sel = sel[np.argsort(-conf[sel], kind="stable")][:max_dets]
            if sel.size:
                scores.append(conf[sel])
                hits.append(_match(np.asarray(boxes)[sel], g.reshape(-1, np.asarray(boxes).shape[1]), iou_threshold))
        aps.append(average_precision(np.concatenate(scores or [np.zeros(0)]),
                                     np.concatenate(hits or [np.zeros(0, dtype=bool)]), n_gt))
    return float(np.mean(aps)) if aps else float("nan")
