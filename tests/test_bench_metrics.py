"""Benchmark metrics and output parsing, each checked against values worked out by hand."""
from __future__ import annotations

import math

import pytest

from lamm.benchmarks.metrics import (
    CIDEr, ECE, Accuracy, Bleu4, CountingMAE, DetectionMAP, MatchRatio, PopeMetric, RobustnessRRM, RougeL,
    VQAAccuracy, ece_equal_count,
)
from lamm.benchmarks.parsing import parse_boxes, parse_number, parse_option, vqa_normalize
from lamm.registry import METRICS


def rec(raw, answer, options=(), labels=None, **extra):
    return {"id": str(id(raw)), "raw": raw, "answer": answer, "options": list(options),
            "labels": list(labels or options), "extra": extra, "task": "t"}


def test_parse_option_rules() -> None:
    opts = ["red", "green", "blue"]
    assert parse_option("Red.", opts) == "red"
    assert parse_option("The colour is green", opts) == "green"
    assert parse_option("red or green", opts) is None  # two different options: unparseable
    assert parse_option("", opts) is None
    assert parse_option("(B) green", opts, ["A", "B", "C"]) == "green"
    assert parse_option("C", opts, ["A", "B", "C"]) == "blue"
    caps = ["a red circle on the left", "red"]
    assert parse_option("a red circle on the left", caps) == "a red circle on the left"
    assert parse_number("There are three shapes") == 3.0
    assert parse_number("12 apples, not 3") == 12.0
    assert parse_number("none") == 0.0 and parse_number("many") is None
    assert parse_boxes("red circle [0.1, 0.2, 0.5, 0.6] and blue star (0, 0, 1, 1)") == [
        ["red circle", 0.1, 0.2, 0.5, 0.6], ["blue star", 0.0, 0.0, 1.0, 1.0]]
    assert parse_boxes("no boxes here") is None


def test_accuracy_and_circular() -> None:
    rs = [rec("red", "red", ["red", "blue"], circular_group="q1"), rec("blue", "red", ["blue", "red"], circular_group="q1"),
          rec("B", "x", ["w", "x"], ["A", "B"], circular_group="q2"), rec("A", "x", ["x", "w"], ["A", "B"], circular_group="q2")]
    out = Accuracy().compute(rs)
    assert out["accuracy"] == 0.75 and out["circular_accuracy"] == 0.5
    # Open answers (OCR words): a reference word in the output.
    assert Accuracy().judge(rec("The sign says HOTEL", ["hotel"]))
    assert not Accuracy().judge(rec("hotels", ["hotel"]))


def test_vqa_accuracy_official() -> None:
    assert vqa_normalize("Two dogs!") == "2 dogs"
    assert vqa_normalize("the cat's") == "cat's"
    assert vqa_normalize("dont") == "don't"
    refs = ["2"] * 2 + ["two"] + ["3"] * 7  # three humans said 2 (after normalisation)
    # leave-one-out: for the 3 "2" answers, 2 others match -> 2/3; for the 7 others, 3 match -> 1.
    expected = (3 * (2 / 3) + 7 * 1.0) / 10
    assert VQAAccuracy().compute([rec("Two", refs)])["vqa_accuracy"] == pytest.approx(expected)
    assert VQAAccuracy().compute([rec("a dog", ["dog"]), rec("cat", ["dog"])])["vqa_accuracy"] == 0.5


@pytest.mark.parametrize("tokenizer", ["ptb", "simple"])
def test_caption_metrics_by_hand(tokenizer: str) -> None:
    rs = [rec("red square", ["red circle"]), rec("blue star", ["blue star"])]
    # CIDEr-D by hand: idf = log(2) for every n-gram (each in 1 of 2 images). Item 1: unigram cosine 1/2,
    # bigram 0 -> mean over n=1..4 = 0.125, x10 = 1.25. Item 2: unigram and bigram cosine 1 -> 5.0.
    assert CIDEr(tokenizer).compute(rs)["cider"] == pytest.approx((1.25 + 5.0) / 2)
    # ROUGE-L: LCS("a b c d", "a c d e") = 3 -> P = R = 3/4 -> F(beta=1.2) = 0.75.
    assert RougeL(tokenizer).compute([rec("a b c d", ["a c d e"])])["rouge_l"] == pytest.approx(0.75)
    assert Bleu4(tokenizer).compute([rec("a b c d e", ["a b c d e"])])["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert Bleu4(tokenizer).compute([rec("x y z w", ["a b c d e"])])["bleu4"] < 1e-3


def test_detection_map50_by_hand() -> None:
    gt = [["circle", 0.0, 0.0, 0.5, 0.5], ["circle", 0.5, 0.5, 1.0, 1.0]]
    # First box hits gt 1 (IoU 1), second misses (IoU 0): P/R = (1, .5) then (.5, .5). COCO 101-point
    # interpolation: precision 1 at the 51 recall points 0..0.5, 0 after -> AP = 51/101.
    r = rec("circle [0, 0, 0.5, 0.5] circle [0.6, 0.0, 0.9, 0.3]", gt)
    assert DetectionMAP().compute([r])["map50"] == pytest.approx(51 / 101, abs=1e-4)
    assert DetectionMAP().compute([rec("circle [0,0,0.5,0.5] circle [0.5,0.5,1,1]", gt)])["map50"] == pytest.approx(1.0)
    assert DetectionMAP().compute([rec("I cannot see boxes", gt)])["map50"] == 0.0
    assert not DetectionMAP().judge(r)
    assert DetectionMAP().judge(rec("circle [0,0,0.5,0.5] circle [0.5,0.5,1,1]", gt))


def test_counting_mae() -> None:
    rs = [rec("3", 3.0), rec("five", 4.0), rec("no idea", 2.0)]  # errors 0, 1, 2 (unparseable = 0)
    assert CountingMAE().compute(rs)["mae"] == pytest.approx(1.0)
    assert CountingMAE().judge(rs[0]) and not CountingMAE().judge(rs[1])


def test_ece_equal_count_by_hand() -> None:
    # 4 items, 2 equal-count bins: confidences sorted [.6,.7 | .8,.9], correct [1,0 | 1,1]
    # bin 1: |0.5 - 0.65| = .15, bin 2: |1 - .85| = .15 -> ECE = .5*.15 + .5*.15 = .15
    assert ece_equal_count([0.9, 0.6, 0.8, 0.7], [True, True, True, False], bins=2) == pytest.approx(0.15)
    # 5 items, 10 bins: one item per non-empty bin -> mean |correct - conf|.
    probs = [[0.9, 0.1], [0.3, 0.7], [0.55, 0.45], [0.2, 0.8], [0.6, 0.4]]
    answers = ["a", "a", "b", "b", "a"]
    rs = [dict(rec("", a, ["a", "b"]), probs=p) for p, a in zip(probs, answers)]
    # argmax: a(.9, right) b(.7, wrong) a(.55, wrong) b(.8, right) a(.6, right)
    expected = (0.1 + 0.7 + 0.55 + 0.2 + 0.4) / 5
    assert ECE().compute(rs)["ece"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="ppl"):
        ECE().compute([rec("a", "a", ["a", "b"])])


def test_pope_metrics_by_hand() -> None:
    rs = [rec("yes", "yes"), rec("Yes, there is.", "yes"), rec("no", "yes"), rec("yes", "no"), rec("no", "no"),
          rec("maybe", "no")]  # unparseable on a no question = false alarm
    out = PopeMetric().compute(rs)
    # tp=2 fn=1 fp=2 tn=1 -> acc 3/6, precision 2/4, recall 2/3, f1 = 2*.5*.667/1.167 = 4/7, yes 3/6
    assert out["pope_accuracy"] == pytest.approx(0.5)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(4 / 7)
    assert out["yes_ratio"] == pytest.approx(0.5)


def test_rrm_by_hand() -> None:
    opts = ["a", "b", "c", "d"]  # chance 0.25
    rs = []
    for c, right in (("clean", 3), ("image", 2), ("text", 1)):
        rs += [rec("a" if i < right else "b", "a", opts, corruption=c) for i in range(4)]
    out = RobustnessRRM().compute(rs)
    # clean .75, image .5, text .25 -> RRM image = (.5-.25)/(.75-.25)*100 = 50, text = 0
    assert out["rrm_image"] == pytest.approx(50.0) and out["rrm_text"] == pytest.approx(0.0)


def test_match_ratio_per_map() -> None:
    opts = ["red", "blue"]
    rs = [rec("A", "red", opts, ["A", "B"], option_map="natural"), rec("red", "red", opts, ["A", "B"], option_map="natural"),
          rec("bar", "blue", opts, ["foo", "bar"], option_map="neutral"),
          rec("B", "red", opts, ["B", "A"], option_map="unnatural")]
    out = MatchRatio().compute(rs)
    assert out["match_ratio_natural"] == 0.5  # answering the option text instead of the label does not match
    assert out["match_ratio_neutral"] == 1.0 and out["match_ratio_unnatural"] == 1.0
    assert out["match_ratio"] == 0.75


def test_unknown_metric_suggests() -> None:
    with pytest.raises(KeyError, match="Did you mean 'accuracy'"):
        METRICS.get("acuracy")
    assert not math.isnan(Accuracy().compute([rec("a", "a", ["a"])])["accuracy"])
