"""Scenarios over the official dataset layouts (tiny copies written by lamm.benchmarks.testing), their
one-line errors on malformed files, the official metrics on hand-checked cases, and lamm-eval on one."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lamm.benchmarks.adapters import ScenarioDataError
from lamm.benchmarks.build import build_metrics, build_scenario
from lamm.benchmarks.testing import OFFICIAL_KINDS, mmmu_row, write_mmmu_parquet, write_official_fixtures
from lamm.datasets.media import load_media

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    return {k: Path(v) for k, v in write_official_fixtures(tmp_path_factory.mktemp("official")).items()}


def _scenario(kind: str, root: Path, **kw):
    return build_scenario({"name": kind, "data_root": str(root), **kw})


def test_every_layout_reads_its_split_and_support(roots) -> None:
    counts = {k: (len(_scenario(k, r).samples()), len(_scenario(k, r).support())) for k, r in roots.items()}
    assert counts == {"coco_captions": (2, 3), "flickr30k": (2, 2), "vqav2": (3, 2), "okvqa": (3, 2),
                      "textvqa": (2, 2), "vizwiz": (2, 2), "imagenet": (3, 6), "hateful_memes": (4, 2),
                      "mme": (12, 0), "mmmu": (3, 3)}
    for kind, root in roots.items():  # every medium resolves to a readable image
        for s in _scenario(kind, root, limit=2).samples():
            assert all(load_media(m).size == (16, 16) for m in s.media), (kind, s.id)
    assert len(_scenario("vqav2", roots["vqav2"], limit=1).samples()) == 1


def test_captions_and_vqa_fields(roots) -> None:
    coco = _scenario("coco_captions", roots["coco_captions"])
    (first, _), support = coco.samples(), coco.support()
    assert first.id == "100" and first.answer == ["a picture number 0 of a red thing.", "a picture number 0 of a blue thing."]
    assert first.media[0].path == str(roots["coco_captions"] / "val2014" / "COCO_val2014_000000000000.jpg")
    assert sorted(s.extra["split"] for s in support) == ["restval", "train", "train"]  # Karpathy's restval is train data
    flickr = _scenario("flickr30k", roots["flickr30k"]).samples()[0]
    assert flickr.media[0].path == str(roots["flickr30k"] / "flickr30k-images" / "1000.jpg")
    vqa = _scenario("vqav2", roots["vqav2"]).samples()
    assert [(s.id, s.task) for s in vqa] == [("10000", "yes/no"), ("10001", "number"), ("11002", "other")]
    assert vqa[0].media[0].path.endswith("val2014/COCO_val2014_000000000010.jpg") and len(vqa[0].answer) == 10
    plain = _scenario("textvqa", roots["textvqa"]).samples()[0]
    ocr = _scenario("textvqa", roots["textvqa"], use_ocr=True).samples()[0]
    assert plain.question == "What does sign 0 say?"  # OCR tokens ignored unless asked
    assert ocr.question == "What does sign 0 say?\nReference OCR tokens: STOP, 0"
    viz = _scenario("vizwiz", roots["vizwiz"]).samples()
    assert [(s.task, s.extra["answerable"]) for s in viz] == [("other", True), ("unanswerable", False)]
    assert viz[1].answer.count("unanswerable") == 8


def test_closed_set_mme_and_mmmu_fields(roots) -> None:
    net = _scenario("imagenet", roots["imagenet"]).samples()
    assert net[0].options == ["tench", "goldfish", "great white shark"]
    assert [s.answer for s in net] == ["tench", "goldfish", "great white shark"]
    names = roots["imagenet"] / "names.txt"  # LOC's lines as shipped, where two classes are both just "crane"
    names.write_text("n01440764 crane\nn01443537 maillot\nn01484850 crane\n")
    assert _scenario("imagenet", roots["imagenet"], class_names="names.txt").samples()[0].options == [
        "crane (n01440764)", "maillot", "crane (n01484850)"]
    names.write_text("tench\ngoldfish\ntench\n")  # a plain list, in sorted wnid order: names must differ
    with pytest.raises(ScenarioDataError, match="names.txt line 3: class name 'tench' of n01484850 is also"):
        _scenario("imagenet", roots["imagenet"], class_names="names.txt").samples()
    names.unlink()
    memes = _scenario("hateful_memes", roots["hateful_memes"]).samples()
    assert [s.answer for s in memes] == ["no", "yes", "no", "yes"] and memes[0].options == ["yes", "no"]
    assert "meme text 0" in memes[0].question and memes[0].extra["text"] == "meme text 0"
    mme = _scenario("mme", roots["mme"]).samples()
    assert {s.task for s in mme} == {"existence", "artwork", "commonsense_reasoning"}
    art = [s for s in mme if s.task == "artwork"]  # the images/ + questions_answer_YN/ layout
    assert [(s.id, s.answer, s.extra["question_group"]) for s in art[:2]] == [
        ("artwork/art_000#0", "yes", "artwork/art_000"), ("artwork/art_000#1", "no", "artwork/art_000")]
    assert len(_scenario("mme", roots["mme"], categories=["existence"]).samples()) == 4
    mmmu = {s.id: s for s in _scenario("mmmu", roots["mmmu"]).samples()}
    two = mmmu["validation_Art_1"]  # "<image 2> or <image 1>": image 2 is shown first and becomes <image 1>
    assert two.question == "Which painting is older, <image 1> or <image 2>?"
    assert [m.field for m in two.media] == ["image_2", "image_1"]
    assert two.options == ["<image 2>", "<image 1>"] and two.answer == "<image 1>"  # answer B = original <image 2>
    assert mmmu["validation_Art_2"].answer == "blue" and mmmu["validation_Math_1"].options == []
    only_mc = _scenario("mmmu", roots["mmmu"], question_types=["multiple-choice"]).samples()
    assert "validation_Math_1" not in {s.id for s in only_mc}


def _rewrite_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _break_line(path: Path, line: int, change) -> None:
    lines = path.read_text().splitlines()
    lines[line] = change(lines[line])
    path.write_text("\n".join(lines) + "\n")


# kind -> (file to break, how, field named in the message)
BREAKS = {
    "coco_captions": ("dataset_coco.json", lambda p: _rewrite_json(p, lambda d: d["images"][0].pop("sentences")), "sentences"),
    "flickr30k": ("dataset_flickr30k.json", lambda p: _rewrite_json(p, lambda d: d["images"][1].pop("filename")), "filename"),
    "vqav2": ("v2_mscoco_val2014_annotations.json",
              lambda p: _rewrite_json(p, lambda d: d["annotations"][1].update(answers="yes")), "answers"),
    "okvqa": ("OpenEnded_mscoco_val2014_questions.json",
              lambda p: _rewrite_json(p, lambda d: d["questions"][0].pop("image_id")), "image_id"),
    "textvqa": ("TextVQA_0.5.1_val.json", lambda p: _rewrite_json(p, lambda d: d["data"][0].pop("question")), "question"),
    "vizwiz": ("Annotations/val.json", lambda p: _rewrite_json(p, lambda d: d[1]["answers"][0].pop("answer")), "answer"),
    "imagenet": ("LOC_synset_mapping.txt", lambda p: _break_line(p, 2, lambda ln: "n01484850"), "<wnid> <name>"),
    "hateful_memes": ("test_seen.jsonl", lambda p: _break_line(p, 1, lambda ln: ln.replace('"label": 1', '"label": 2')),
                      "label"),
    "mme": ("existence/exi_001.txt", lambda p: _break_line(p, 1, lambda ln: ln.replace("\tNo", "\tMaybe")), "answer"),
    "mmmu": ("Art/validation-00000-of-00001.parquet",
             lambda p: write_mmmu_parquet(p, [mmmu_row("validation_Art_9", "<image 1> Which?", ["a", "b"], "E", 1, 0)]),
             "answer"),
}


@pytest.mark.parametrize("kind", OFFICIAL_KINDS)
def test_malformed_file_is_one_line_naming_file_and_field(roots, tmp_path, kind) -> None:
    root = tmp_path / kind
    shutil.copytree(roots[kind], root)
    name, breaks, field = BREAKS[kind]
    breaks(root / name)
    with pytest.raises(ScenarioDataError) as err:
        _scenario(kind, root).samples()
    msg = str(err.value)
    assert "\n" not in msg and str(root / name) in msg and field in msg, msg
    assert isinstance(err.value, ValueError)  # lamm-eval's error boundary: exit 2


def test_missing_files_fail_when_built(tmp_path) -> None:
    """Before any model loads: the scenario names the file it expected."""
    for kind, expected in [("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json"), ("coco_captions", "dataset_coco.json"),
                           ("vizwiz", "Annotations/val.json"), ("hateful_memes", "test_seen.jsonl"),
                           ("imagenet", "classnames.txt"), ("mmmu", "validation-00000-of-00001.parquet")]:
        with pytest.raises(ScenarioDataError, match=expected):
            _scenario(kind, tmp_path)
    with pytest.raises(ScenarioDataError, match="data_root is not a folder"):
        _scenario("okvqa", tmp_path / "nowhere")


# -- metrics, checked by hand ---------------------------------------------------------------------------

def _rec(raw, answer, **kw) -> dict:
    return {"id": kw.pop("id", raw), "task": kw.pop("task", "t"), "raw": raw, "answer": answer,
            "options": kw.pop("options", []), "labels": [], "extra": kw.pop("extra", {}), **kw}


def test_vqa_accuracy_leave_one_out_and_normalisation() -> None:
    (vqa,) = build_metrics(["vqa_accuracy"])
    yes_no = ["yes"] * 7 + ["no"] * 3
    ball = ["a ball", "ball", "ball", "toy", "toy", "sphere", "ball", "ball.", "orb", "Ball"]
    # "no": 3 of 10 humans; leaving out one of them (3 of the 10 subsets) leaves 2 -> 2/3, else 3 -> 1
    assert vqa.score(_rec("no", yes_no)) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    # "toy": 2 humans -> 1/3 when one is left out (2 subsets), 2/3 otherwise (8)
    assert vqa.score(_rec("toy", ball)) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    # official normalisation: articles, case, trailing period, number words -> digits
    assert vqa.score(_rec("The ball.", ball)) == 1.0 and vqa.score(_rec("Two", ["2"] * 4 + ["3"] * 6)) == 1.0
    assert vqa.score(_rec("unanswerable", ["unanswerable"] * 8 + ["blurry"] * 2)) == 1.0
    assert vqa.compute([_rec("no", yes_no), _rec("yes", yes_no)])["vqa_accuracy"] == pytest.approx(0.95)
    by_type = vqa.compute([_rec("no", yes_no, task="yes/no"), _rec("toy", ball, task="other"),
                           _rec("ball", ball, task="other")])
    assert by_type["vqa_accuracy_yes/no"] == pytest.approx(0.9) and by_type["vqa_accuracy_other"] == pytest.approx(0.8)


@pytest.mark.parametrize("protocol, expected", [("textvqa", [1, 1, 1, 1, 1]), ("vqav2", [0, 0, 1, 1, 1]),
                                                ("vizwiz", [0, 0, 1, 1, 0])])
def test_vqa_accuracy_protocols(protocol, expected) -> None:
    """Where the scripts differ: all process the prediction ("two" -> "2", "the ball" -> "ball"); VQAv2
    leaves unanimous human answers as written and only de-punctuates the others; VizWiz never touches them."""
    (vqa,) = build_metrics([{"name": "vqa_accuracy", "protocol": protocol}])
    cases = [("two", ["two"] * 10), ("blue", ["Blue"] * 10), ("the ball", ["ball"] * 10),
             ("Ball!", ["ball"] * 5 + ["balls"] * 5), ("ball", ["ball."] * 5 + ["orb"] * 5)]
    assert [vqa.score(_rec(raw, refs)) for raw, refs in cases] == expected


def test_vizwiz_unanswerability() -> None:
    """VizWiz's second task: does the answer say "unanswerable" where the question is (positive class)?"""
    (vqa,) = build_metrics([{"name": "vqa_accuracy", "protocol": "vizwiz"}])
    refs = ["unanswerable"] * 10
    recs = [_rec("Unanswerable.", refs, extra={"answerable": False}), _rec("blue", refs, extra={"answerable": False}),
            _rec("unanswerable", ["red"] * 10, extra={"answerable": True}), _rec("red", ["red"] * 10, extra={"answerable": True})]
    out = vqa.compute(recs)
    # predicted unanswerable: samples 1 and 3; truly unanswerable: 1 and 2 -> precision 1/2, recall 1/2
    assert out["unanswerable_f1"] == pytest.approx(0.5) and out["vqa_accuracy"] == pytest.approx(0.5)
    # binary scores: recall 1/2 at precision 1/2 (score 1), the other 1/2 at precision 2/4 (score 0) -> AP 0.5
    assert out["unanswerable_ap"] == pytest.approx(0.5)
    assert "unanswerable_f1" not in build_metrics(["vqa_accuracy"])[0].compute(recs)


def test_cider_hand_checked() -> None:
    """CIDEr-D with every n-gram in one image's references only: idf = log(#images), a copied reference
    scores 10; "a b" against "a b c d": unigram cosine 2/(sqrt2*2), bigram 1/sqrt3, no 3-/4-grams,
    length penalty exp(-(2-4)^2 / (2*6^2)), x10, mean over n = 1..4."""
    (cider,) = build_metrics([{"name": "cider", "tokenizer": "simple"}])
    exact = cider.compute([_rec("a b c d", ["a b c d"]), _rec("e f g h", ["e f g h"])])["cider"]
    assert exact == pytest.approx(10.0)
    partial = cider.compute([_rec("a b", ["a b c d"]), _rec("e f g h", ["e f g h"])])["cider"]
    by_hand = 10 * (1 / math.sqrt(2) + 1 / math.sqrt(3)) / 4 * math.exp(-4 / 72)
    assert partial == pytest.approx((by_hand + 10.0) / 2)


def test_roc_auc_from_option_probabilities() -> None:
    (auc,) = build_metrics(["roc_auc"])
    recs = [_rec("yes", a, options=["yes", "no"], probs=[p, 1 - p]) for a, p in
            [("yes", 0.9), ("yes", 0.4), ("no", 0.6), ("no", 0.2)]]
    # positive-negative pairs ranked right: (0.9, 0.6), (0.9, 0.2), (0.4, 0.2); wrong: (0.4, 0.6) -> 3/4
    assert auc.compute(recs)["roc_auc"] == pytest.approx(0.75)
    recs[1]["probs"] = [0.6, 0.4]  # a tie with a negative counts one half
    assert auc.compute(recs)["roc_auc"] == pytest.approx(3.5 / 4)
    assert math.isnan(auc.compute(recs[:2])["roc_auc"])  # one class only
    with pytest.raises(ValueError, match="needs per-option probabilities"):
        auc.compute([_rec("yes", "yes", options=["yes", "no"])])


def test_mme_acc_plus_and_score_sums() -> None:
    (mme,) = build_metrics(["mme"])

    def pair(cat, image, raws, answers=("yes", "no")):
        return [_rec(r, a, id=f"{cat}/{image}#{k}", task=cat, options=["yes", "no"],
                     extra={"question_group": f"{cat}/{image}"}) for k, (r, a) in enumerate(zip(raws, answers))]

    recs = (pair("existence", "a", ["Yes, there is.", "No."]) + pair("existence", "b", ["yes", "yes"])
            + pair("artwork", "c", ["no", "I think yes"]) + pair("commonsense_reasoning", "d", ["yes", "no"]))
    out = mme.compute(recs)
    # existence: 3 of 4 questions right (75), 1 of 2 images fully right (50); artwork: "I think yes" is not
    # read as yes (MME looks in the first four characters) -> 0 and 0; commonsense: 100 + 100
    assert (out["mme_existence_acc"], out["mme_existence_acc_plus"], out["mme_existence_score"]) == (75.0, 50.0, 125.0)
    assert out["mme_artwork_score"] == 0.0 and out["mme_commonsense_reasoning_score"] == 200.0
    assert (out["mme_perception"], out["mme_cognition"]) == (125.0, 200.0)
    assert [mme.parse(r) for r in recs[4:6]] == ["no", None]


# -- the command a user types ----------------------------------------------------------------------------

TINY_MODEL = ['model.overrides=["model/llm=tiny_random","model.encoder.image_size=32","model.encoder.width=32"]',
              "model.name=tiny"]
MME_RECIPE = """\
# MME on the folder under ${data_root}/mme, option scoring
name: tiny_mme
scenario: {name: mme, data_root: "${data_root}/mme", categories: [existence, commonsense_reasoning]}
instruction: {name: standard, option_style: none}
inferencer: {name: ppl}
metrics: [mme, accuracy]
"""


def _lamm_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LAMM_TRUST_RECIPE"}
    return subprocess.run([str(BIN / "lamm-eval"), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_lamm_eval_on_official_layout(roots, tmp_path) -> None:
    recipe = tmp_path / "tiny_mme.yaml"
    recipe.write_text(MME_RECIPE)
    data_root = roots["mme"].parent
    result = _lamm_eval(f"benchmark={recipe}", f"data_root={data_root}", f"output_dir={tmp_path / 'out'}",
                        "batch_size=4", *TINY_MODEL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "tiny" / "tiny_mme" / "results.json").read_text())
    assert res["n"] == 8 and set(res["per_task"]) == {"existence", "commonsense_reasoning"}
    m = res["metrics"]
    assert m["mme_perception"] == m["mme_existence_score"] and m["mme_cognition"] == m["mme_commonsense_reasoning_score"]
    records = [json.loads(x) for x in (tmp_path / "out" / "tiny" / "tiny_mme" / "samples.jsonl").read_text().splitlines()]
    assert records[0]["extra"]["question_group"] == "existence/exi_000" and len(records[0]["probs"]) == 2
    # acc+ recomputed from the written records agrees with results.json
    right = {}
    for r in records:
        right.setdefault(r["extra"]["question_group"], []).append(r["correct"])
    exist = [all(v) for g, v in right.items() if g.startswith("existence/")]
    assert m["mme_existence_acc_plus"] == pytest.approx(100 * sum(exist) / len(exist))

    # a data_root without the dataset: one line, exit 2, before any model loads; nothing written
    result = _lamm_eval(f"benchmark={recipe}", f"data_root={tmp_path / 'empty'}", f"output_dir={tmp_path / 'bad'}",
                        *TINY_MODEL, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"lamm-eval: error: scenario mme: data_root is not a folder: {tmp_path / 'empty' / 'mme'}")
    assert not (tmp_path / "bad").exists()
