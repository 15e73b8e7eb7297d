"""Metrics over per-sample records.

Decisions where the papers leave room:
- Unparseable output is wrong: accuracy/POPE/RRM/match ratio count it wrong (POPE: a miss on a yes
  question, a false alarm on a no question); MAE scores it as a prediction of 0; mAP as no boxes.
- ECE: confidence = the highest option probability, bins of equal count (10), |acc - conf| weighted
  by bin size. Needs `probs` (inferencer ppl).
- Captions: pycocoevalcap's BLEU-4, CIDEr (its CIDEr-D scorer) and ROUGE-L after its PTB tokenizer
  (Java, found on this machine); `tokenizer: simple` (lower-case, punctuation stripped) skips Java.
- mAP@0.5: COCO-style mean average precision at IoU 0.5 (101-point interpolation, mean over the
  classes with ground truth), boxes parsed from `label [x1, y1, x2, y2]` text; text carries no
  confidence, so the k-th box of an answer scores 1/(1+k) (models list the surest first) and ties
  across images keep record order. 2D boxes use torchmetrics' MeanAveragePrecision; 3D boxes
  (`label [x1, y1, z1, x2, y2, z2]`, axis-aligned, min corner then max corner) use the same
  conventions in `lamm.benchmarks.box3d` (axis-aligned 3D IoU). The ground truth decides: an answer's
  boxes of the other size are not boxes for this sample (as any other text); a recipe whose ground
  truth mixes 2D and 3D boxes is an error.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from lamm.benchmarks.base import Metric
from lamm.benchmarks.box3d import box_iou, mean_average_precision
from lamm.benchmarks.parsing import norm, parse_boxes, parse_number, parse_option, vqa_normalize, vqa_punctuation
from lamm.registry import METRICS


def _refs(answer: Any) -> list[str]:
    return [answer] if isinstance(answer, str) else [str(a) for a in answer]


def _same(a: Any, b: Any) -> bool:
    return a is not None and norm(a) == norm(b)


@METRICS.register("accuracy")
class Accuracy(Metric):
    """Closed set: the parsed option equals the answer. Open answers (OCR words): a reference appears in
    the output. With `circular_group` in the samples (MMBench), also `circular_accuracy`."""

    name = "accuracy"

    def parse(self, record: dict[str, Any]) -> Any:
        if record.get("options"):
            return super().parse(record)
        return norm(record["raw"]) or None

    def judge(self, record: dict[str, Any]) -> bool:
        parsed = self.parse(record)
        if parsed is None:
            return False
        if record.get("options"):
            return _same(parsed, record["answer"])
        return any(re.search(rf"(?<!\w){re.escape(norm(r))}(?!\w)", parsed) for r in _refs(record["answer"]))

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        ok = [self.judge(r) for r in records]
        out = {"accuracy": float(np.mean(ok)) if ok else float("nan")}
        groups: dict[str, list[bool]] = defaultdict(list)
        for r, k in zip(records, ok):
            g = (r.get("extra") or {}).get("circular_group")
            if g is not None:
                groups[str(g)].append(k)
        if groups:
            out["circular_accuracy"] = float(np.mean([all(v) for v in groups.values()]))
        return out


VQA_PROTOCOLS = ("textvqa", "vqav2", "vizwiz")


@METRICS.register("vqa_accuracy")
class VQAAccuracy(Metric):
    """VQA accuracy: min(#matching humans / 3, 1) averaged over the leave-one-out subsets of the human answers
    (one reference: exact match), after the official answer processing as each dataset's script applies it:
    - `textvqa` (default; TextVQA's evaluation): prediction and human answers fully processed (punctuation,
      digits, articles, contractions, lower case);
    - `vqav2` (VQAv2's and OK-VQA's script): the prediction fully processed; the human answers get only the
      punctuation step, and only when they disagree;
    - `vizwiz` (VizWiz's script): the prediction fully processed, the human answers as written. With
      `extra.answerable` in the records it also scores VizWiz's unanswerability task as its script does,
      an answer of "unanswerable" predicting "not answerable": `unanswerable_ap` (average precision) and
      `unanswerable_f1`.
    The output's first line is the answer."""

    name = "vqa_accuracy"

    def __init__(self, protocol: str = "textvqa") -> None:
        if protocol not in VQA_PROTOCOLS:
            raise ValueError(f"metric vqa_accuracy: protocol must be one of {', '.join(VQA_PROTOCOLS)}, found {protocol!r}")
        self.protocol = protocol

    def parse(self, record: dict[str, Any]) -> Any:
        text = record["raw"].strip().split("\n")[0]
        return vqa_normalize(text) or None

    def _compared(self, record: dict[str, Any]) -> tuple[str, list[str]]:
        """(prediction, human answers) as the protocol's script compares them."""
        pred = record["raw"].strip().split("\n")[0].replace("\t", " ").strip()
        refs = [a.replace("\n", " ").replace("\t", " ").strip() for a in _refs(record["answer"])]
        disagree = len(set(refs)) > 1
        if self.protocol == "textvqa":
            return vqa_normalize(pred), [vqa_normalize(a) for a in refs]
        if self.protocol == "vqav2":
            return vqa_normalize(pred), [vqa_punctuation(a) for a in refs] if disagree else refs
        return vqa_normalize(pred), refs

    def score(self, record: dict[str, Any]) -> float:
        pred, refs = self._compared(record)
        if not pred:
            return 0.0
        if len(refs) == 1:
            return float(pred == refs[0])
        accs = []
        for i in range(len(refs)):
            others = refs[:i] + refs[i + 1:]
            accs.append(min(1.0, sum(a == pred for a in others) / 3.0))
        return float(np.mean(accs))

    def judge(self, record: dict[str, Any]) -> bool:
        return self.score(record) > 0.0

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        scores = [self.score(r) for r in records]
        out = {"vqa_accuracy": float(np.mean(scores)) if records else float("nan")}
        by_task: dict[str, list[float]] = defaultdict(list)
        for r, v in zip(records, scores):
            by_task[str(r.get("task"))].append(v)
        if len(by_task) > 1:  # the official scripts also report each answer type (the VQA scenarios' task)
            out.update({f"vqa_accuracy_{t}": float(np.mean(v)) for t, v in sorted(by_task.items())})
        flags = [(r.get("extra") or {}).get("answerable") for r in records]
        if self.protocol == "vizwiz" and records and all(f is not None for f in flags):
            out.update(unanswerability([not f for f in flags], [self._compared(r)[0] == "unanswerable" for r in records]))
        return out


def unanswerability(truth: Sequence[bool], predicted: Sequence[bool]) -> dict[str, float]:
    """VizWiz's unanswerability scores (positive class: not answerable); NaN when one class is absent."""
    from sklearn.metrics import average_precision_score, f1_score

    if len(set(truth)) < 2:
        return {"unanswerable_ap": float("nan"), "unanswerable_f1": float("nan")}
    y, p = np.asarray(truth, dtype=int), np.asarray(predicted, dtype=float)
    return {"unanswerable_ap": float(average_precision_score(y, p)), "unanswerable_f1": float(f1_score(y, p > 0.5))}


def _simple_tokenize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class _Caption(Metric):
    """pycocoevalcap scorers over (raw output, reference captions)."""

    key = "caption"

    def __init__(self, tokenizer: str = "ptb") -> None:
        if tokenizer not in ("ptb", "simple"):
            raise ValueError(f"metric {self.key}: tokenizer must be ptb or simple, found {tokenizer!r}")
        self.tokenizer = tokenizer

    def parse(self, record: dict[str, Any]) -> Any:
        return record["raw"].strip() or None

    def _tokenized(self, records: Sequence[dict[str, Any]]) -> tuple[dict, dict]:
        gts = {str(i): _refs(r["answer"]) for i, r in enumerate(records)}
        res = {str(i): [r["raw"].strip() or "<empty>"] for i, r in enumerate(records)}
        if self.tokenizer == "ptb":
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

            tok = PTBTokenizer()
            wrap = lambda d: {k: [{"caption": c} for c in v] for k, v in d.items()}  # noqa: E731
            return tok.tokenize(wrap(gts)), tok.tokenize(wrap(res))
        return ({k: [_simple_tokenize(c) for c in v] for k, v in gts.items()},
                {k: [_simple_tokenize(c) for c in v] for k, v in res.items()})

    def scorer(self) -> Any:
        raise NotImplementedError

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        if not records:
            return {self.key: float("nan")}
        gts, res = self._tokenized(records)
        scorer = self.scorer()
        kwargs = {"verbose": 0} if self.key == "bleu4" else {}  # BLEU prints its ratios unless told not to
        score, _ = scorer.compute_score(gts, res, **kwargs)
        if isinstance(score, list):  # BLEU returns BLEU-1..4
            return {self.key: float(score[3])}
        return {self.key: float(score)}


@METRICS.register("bleu4")
class Bleu4(_Caption):
    """Corpus BLEU-4 (pycocoevalcap)."""

    key = name = "bleu4"

    def scorer(self) -> Any:
        from pycocoevalcap.bleu.bleu import Bleu

        return Bleu(4)


@METRICS.register("cider")
class CIDEr(_Caption):
    """CIDEr (pycocoevalcap's CIDEr-D: clipped tf-idf n-gram cosine, Gaussian length penalty, x10)."""

    key = name = "cider"

    def scorer(self) -> Any:
        from pycocoevalcap.cider.cider import Cider

        return Cider()


@METRICS.register("rouge_l")
class RougeL(_Caption):
    """ROUGE-L F-measure with beta 1.2 (pycocoevalcap)."""

    key = name = "rouge_l"

    def scorer(self) -> Any:
        from pycocoevalcap.rouge.rouge import Rouge

        return Rouge()


@METRICS.register("map50")
class DetectionMAP(Metric):
    """Detection mAP at IoU 0.5 over boxes parsed from text (`class_agnostic` ignores labels); 2D boxes
    `[x1, y1, x2, y2]` or 3D boxes `[x1, y1, z1, x2, y2, z2]`, as the ground truth has them."""

    name = "map50"

    def __init__(self, class_agnostic: bool = False) -> None:
        self.class_agnostic = class_agnostic

    def _boxes(self, record: dict[str, Any], size: int | None) -> list[list[Any]]:
        """The answer's parsed boxes with `size` numbers (all of them if None), in answer order."""
        return [b for b in parse_boxes(record["raw"]) or [] if size is None or len(b) == size + 1]

    def parse(self, record: dict[str, Any]) -> Any:
        return self._boxes(record, _box_size([record])) or None

    def judge(self, record: dict[str, Any]) -> bool:
        """Every ground-truth box matched at IoU >= 0.5 by a parsed box of the same label."""
        gt, preds = record["answer"], self._boxes(record, _box_size([record]))
        if not gt or not preds:
            return not gt and not preds
        iou = box_iou(np.array([p[1:] for p in preds]), np.array([g[1:] for g in gt]))
        same = np.array([[self.class_agnostic or norm(p[0]) == norm(g[0]) for g in gt] for p in preds])
        return bool(((iou >= 0.5) & same).any(axis=0).all())

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        size = _box_size(records) or 4
        names: dict[str, int] = {}

        def cls(label: str) -> int:
            return 0 if self.class_agnostic else names.setdefault(norm(label), len(names))

        target, preds = [], []
        for r in records:
            pb = self._boxes(r, size)
            target.append(([g[1:] for g in r["answer"]], [cls(g[0]) for g in r["answer"]]))
            preds.append(([p[1:] for p in pb], [1.0 / (1 + k) for k in range(len(pb))], [cls(p[0]) for p in pb]))
        if size == 6:
            value = mean_average_precision(
                [(np.array(b, dtype=np.float64).reshape(-1, 6), np.array(s), np.array(c, dtype=np.int64))
                 for b, s, c in preds],
                [(np.array(b, dtype=np.float64).reshape(-1, 6), np.array(c, dtype=np.int64)) for b, c in target],
                iou_threshold=0.5)
            return {"map50": value}
        import torch
        from torchmetrics.detection import MeanAveragePrecision

        m = MeanAveragePrecision(box_format="xyxy", iou_thresholds=[0.5])
        m.update([{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(s),
                   "labels": torch.tensor(c, dtype=torch.long)} for b, s, c in preds],
                 [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
                   "labels": torch.tensor(c, dtype=torch.long)} for b, c in target])
        return {"map50": float(m.compute()["map"])}


def _box_size(records: Sequence[dict[str, Any]]) -> int | None:
    """How many numbers the ground-truth boxes of these records have (4 = 2D, 6 = 3D); None if no box."""
    first: dict[int, str] = {}
    for r in records:
        for g in r["answer"]:
            first.setdefault(len(g) - 1, str(r.get("id")))
    bad = sorted(set(first) - {4, 6})
    if bad:
        raise ValueError(f"metric map50: sample {first[bad[0]]!r} has a ground-truth box of {bad[0]} numbers; "
                         "expected 4 [x1, y1, x2, y2] or 6 [x1, y1, z1, x2, y2, z2]")
    if len(first) > 1:
        raise ValueError(f"metric map50: the records mix 2D and 3D ground-truth boxes (sample {first[4]!r} has 4 "
                         f"numbers, sample {first[6]!r} has 6); score 2D and 3D detection in separate recipes")
    return next(iter(first), None)


@METRICS.register("mae")
class CountingMAE(Metric):
    """Mean absolute error of the first number in the output (unparseable = predicted 0)."""

    name = "mae"

    def parse(self, record: dict[str, Any]) -> Any:
        return parse_number(record["raw"])

    def judge(self, record: dict[str, Any]) -> bool:
        p = self.parse(record)
        return p is not None and round(p) == round(float(record["answer"]))

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        errs = [abs((self.parse(r) or 0.0) - float(r["answer"])) for r in records]
        return {"mae": float(np.mean(errs)) if errs else float("nan")}


def ece_equal_count(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error over `bins` bins holding (almost) equal numbers of samples."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for part in np.array_split(order, bins):
        if len(part):
            total += len(part) / len(conf) * abs(ok[part].mean() - conf[part].mean())
    return float(total)


@METRICS.register("ece")
class ECE(Metric):
    """Calibration: ECE with `bins` equal-count bins over the top option probability (inferencer ppl)."""

    name = "ece"

    def __init__(self, bins: int = 10) -> None:
        self.bins = bins

    def judge(self, record: dict[str, Any]) -> bool:
        return _same(self.parse(record), record["answer"])

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        with_probs = [r for r in records if r.get("probs")]
        if len(with_probs) != len(records):
            raise ValueError(f"metric ece needs per-option probabilities; {len(records) - len(with_probs)} records "
                             "have none (use inferencer ppl)")
        if not records:
            return {"ece": float("nan")}
        conf = [max(r["probs"]) for r in records]
        ok = [r["options"][int(np.argmax(r["probs"]))] == r["answer"] for r in records]
        return {"ece": ece_equal_count(conf, ok, self.bins), "mean_confidence": float(np.mean(conf))}


@METRICS.register("pope")
class PopeMetric(Metric):
    """POPE hallucination: accuracy, precision, recall, F1 with "yes" as the positive class, yes-ratio."""

    name = "pope"

    def parse(self, record: dict[str, Any]) -> Any:
        return parse_option(record["raw"], ["yes", "no"], record.get("labels") or None)

    def judge(self, record: dict[str, Any]) -> bool:
        return _same(self.parse(record), record["answer"])

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        tp = fp = tn = fn = yes = 0
        for r in records:
            p, gt = self.parse(r), norm(r["answer"])
            yes += p == "yes"
            if gt == "yes":
                tp += p == "yes"
                fn += p != "yes"
            else:
                tn += p == "no"
                fp += p != "no"
        n = max(1, len(records))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"pope_accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
                "yes_ratio": yes / n}


@METRICS.register("rrm")
class RobustnessRRM(Metric):
    """Relative robustness (ChEF): RRM_c = (acc_c - chance) / (acc_clean - chance) x 100 per corruption c,
    with chance the mean of 1 / #options; records grouped by `extra.corruption` (scenario corrupted)."""

    name = "rrm"

    def judge(self, record: dict[str, Any]) -> bool:
        return _same(self.parse(record), record["answer"])

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            groups[(r.get("extra") or {}).get("corruption", "clean")].append(r)
        if "clean" not in groups:
            raise ValueError("metric rrm needs clean samples (scenario corrupted keeps them)")
        acc = {c: float(np.mean([self.judge(r) for r in rs])) for c, rs in groups.items()}
        chance = float(np.mean([1.0 / len(r["options"]) for r in records if r.get("options")] or [0.0]))
        out = {f"accuracy_{c}": a for c, a in acc.items()}
        out["chance"] = chance
        denom = acc["clean"] - chance
        for c, a in acc.items():
            if c != "clean":
                out[f"rrm_{c}"] = (a - chance) / denom * 100.0 if abs(denom) > 1e-12 else float("nan")
        return out


@METRICS.register("match_ratio")
class MatchRatio(Metric):
    """Instruction following: the share of outputs naming the correct option by its mapped label
    (instruction option_map), overall and per map (`match_ratio_<map>`)."""

    name = "match_ratio"

    def parse(self, record: dict[str, Any]) -> Any:
        # Only the label counts: an answer that repeats the option text instead did not follow the map.
        labels = record.get("labels") or record.get("options") or []
        for i, lab in enumerate(labels):
            if norm(record["raw"]) == norm(lab) or re.match(rf"^[(\[]?{re.escape(norm(lab))}[)\].:,\s]", norm(record["raw"]) + " "):
                return record["options"][i]
        return None

    def judge(self, record: dict[str, Any]) -> bool:
        return _same(self.parse(record), record["answer"])

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        by_map: dict[str, list[bool]] = defaultdict(list)
        for r in records:
            by_map[(r.get("extra") or {}).get("option_map", "natural")].append(self.judge(r))
        out = {"match_ratio": float(np.mean([v for vs in by_map.values() for v in vs])) if records else math.nan}
        out.update({f"match_ratio_{k}": float(np.mean(v)) for k, v in by_map.items()})
        return out


@METRICS.register("roc_auc")
class RocAUC(Metric):
    """Area under the ROC curve of the `positive` option's probability (Hateful Memes: P("yes"), the
    challenge's metric); needs per-option probabilities (inferencer ppl). NaN when one class is absent."""

    name = "roc_auc"

    def __init__(self, positive: str = "yes") -> None:
        self.positive = positive

    def judge(self, record: dict[str, Any]) -> bool:
        return _same(self.parse(record), record["answer"])

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        from sklearn.metrics import roc_auc_score

        scores, labels = [], []
        for r in records:
            if not r.get("probs"):
                raise ValueError(f"metric roc_auc needs per-option probabilities; sample {r.get('id')!r} has none "
                                 "(use inferencer ppl)")
            opts = [norm(o) for o in r.get("options") or []]
            if norm(self.positive) not in opts:
                raise ValueError(f"metric roc_auc: sample {r.get('id')!r} has no option {self.positive!r} "
                                 f"(options {r.get('options')})")
            scores.append(float(r["probs"][opts.index(norm(self.positive))]))
            labels.append(int(norm(r["answer"]) == norm(self.positive)))
        if len(set(labels)) < 2:
            return {"roc_auc": float("nan")}
        return {"roc_auc": float(roc_auc_score(labels, scores))}


def mme_answer(raw: str) -> str | None:
    """MME's reading of an answer: yes/no exactly, else "yes" or "no" within its first four characters."""
    text = raw.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return None


@METRICS.register("mme")
class MMEScore(Metric):
    """MME, on its scale: per category (the sample's task) acc = % of questions right, acc_plus = % of
    images with both questions right (`extra.question_group`), score = acc + acc_plus; `mme_perception`
    and `mme_cognition` sum the scores of the categories of each kind (at most 2000 and 800)."""

    name = "mme"

    def parse(self, record: dict[str, Any]) -> Any:
        return mme_answer(record["raw"])

    def judge(self, record: dict[str, Any]) -> bool:
        return _same(self.parse(record), record["answer"])

    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        from lamm.benchmarks.mme import COGNITION, PERCEPTION

        by_cat: dict[str, list[bool]] = defaultdict(list)
        groups: dict[tuple[str, str], list[bool]] = defaultdict(list)
        for r in records:
            ok = self.judge(r)
            by_cat[r["task"]].append(ok)
            group = (r.get("extra") or {}).get("question_group", r["id"])
            groups[(r["task"], str(group))].append(ok)
        out: dict[str, float] = {}
        totals: dict[str, float] = {}
        for cat, oks in by_cat.items():
            acc = 100.0 * float(np.mean(oks))
            acc_plus = 100.0 * float(np.mean([all(v) for (c, _), v in groups.items() if c == cat]))
            out.update({f"mme_{cat}_acc": acc, f"mme_{cat}_acc_plus": acc_plus, f"mme_{cat}_score": acc + acc_plus})
            kind = "perception" if cat in PERCEPTION else "cognition" if cat in COGNITION else None
            if kind:
                totals[kind] = totals.get(kind, 0.0) + acc + acc_plus
        return {**{f"mme_{k}": v for k, v in sorted(totals.items(), reverse=True)}, **out}
