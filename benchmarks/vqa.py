"""Open-ended VQA over the official files: VQAv2, OK-VQA, TextVQA, VizWiz.

Every sample's answer is the list of human answers (10 for all four datasets), scored with
`vqa_accuracy`: min(#matching humans / 3, 1) averaged over the ten leave-one-out subsets after the
official answer processing, applied as each dataset's script does (`protocol: vqav2` for VQAv2 and
OK-VQA, `textvqa`, `vizwiz`).
A sample's task is its answer type where the dataset has one (VQAv2/OK-VQA/VizWiz: yes/no, number,
other; VizWiz also unanswerable), so results.json's per-task table breaks accuracy down by it.

VizWiz's unanswerable questions keep their human answers (mostly "unanswerable"), as VizWiz's own
evaluation does: a model scores on them by answering "unanswerable"; `extra.answerable` lets
`vqa_accuracy` (protocol vizwiz) score the unanswerability task too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lamm.benchmarks.adapters import ScenarioDataError, load_json
from lamm.benchmarks.base import EvalSample
from lamm.benchmarks.official import OfficialScenario, need, need_text
from lamm.datasets.sample import MediaRef
from lamm.registry import SCENARIOS


def human_answers(item: Any, where: str) -> list[str]:
    """The `answers` field as text: a list of strings (TextVQA) or of `{answer: ...}` (VQAv2, VizWiz)."""
    answers = need(item, "answers", where, list)
    if not answers:
        raise ScenarioDataError(f"{where}: field 'answers' is empty")
    return [a if isinstance(a, str) else need_text(a, "answer", f"{where}.answers[{j}]") for j, a in enumerate(answers)]


class CocoVQA(OfficialScenario):
    """Questions + annotations JSON over COCO images (the VQAv2 file format; OK-VQA uses it too)."""

    name = "coco_vqa"
    questions_file = "v2_OpenEnded_mscoco_{split}_questions.json"
    annotations_file = "v2_mscoco_{split}_annotations.json"

    def __init__(self, data_root: str, split: str = "val2014", support_split: str | None = "train2014",
                 image_dir: str = "{split}", image_file: str = "COCO_{split}_{image_id:012d}.jpg",
                 limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, limit)
        self.image_dir, self.image_file = image_dir, image_file
        for path in self._files(split):
            if not path.is_file():
                raise ScenarioDataError(f"scenario {self.name}: file not found: expected {path}")

    def _files(self, split: str) -> tuple[Path, Path]:
        return (self.data_root / self.questions_file.format(split=split),
                self.data_root / self.annotations_file.format(split=split))

    def load(self, split: str) -> list[EvalSample]:
        qpath, apath = self._files(split)
        questions = need(load_json(qpath, f"scenario {self.name}"), "questions", str(qpath), list)
        annotations = need(load_json(apath, f"scenario {self.name}"), "annotations", str(apath), list)
        by_id = {}
        for i, ann in enumerate(annotations):
            by_id[str(need(ann, "question_id", f"{apath} annotations[{i}]", (int, str)))] = (i, ann)
        out = []
        for i, q in enumerate(questions):
            where = f"{qpath} questions[{i}]"
            qid = str(need(q, "question_id", where, (int, str)))
            image_id = need(q, "image_id", where, int)
            if qid not in by_id:
                raise ScenarioDataError(f"{apath}: no annotation for question_id {qid} (field 'question_id' of {where})")
            j, ann = by_id[qid]
            answers = human_answers(ann, f"{apath} annotations[{j}]")
            image = self.data_root / self.image_dir.format(split=split) / self.image_file.format(split=split, image_id=image_id)
            out.append(EvalSample(qid, need_text(q, "question", where), [], answers,
                                  [MediaRef("image", str(image), "image_id")], str(ann.get("answer_type") or "vqa"),
                                  {"image_id": image_id}))
        return out


@SCENARIOS.register("vqav2")
class VQAv2(CocoVQA):
    """VQAv2: `<data_root>/v2_OpenEnded_mscoco_<split>_questions.json` + `v2_mscoco_<split>_annotations.json`,
    images `<data_root>/<split>/COCO_<split>_<image_id:012d>.jpg`; split val2014, support train2014."""

    name = "vqav2"


@SCENARIOS.register("okvqa")
class OKVQA(CocoVQA):
    """OK-VQA: `<data_root>/OpenEnded_mscoco_<split>_questions.json` + `mscoco_<split>_annotations.json`,
    COCO images as VQAv2; split val2014, support train2014."""

    name = "okvqa"
    questions_file = "OpenEnded_mscoco_{split}_questions.json"
    annotations_file = "mscoco_{split}_annotations.json"


@SCENARIOS.register("textvqa")
class TextVQA(OfficialScenario):
    """TextVQA: `<data_root>/TextVQA_0.5.1_<split>.json` (`data: [{question_id, question, image_id, answers}]`),
    images `<data_root>/train_images/<image_id>.jpg` (val images ship in train_images too).

    OCR tokens are ignored unless `use_ocr: true`: then the item's `ocr_tokens`, or those of
    `TextVQA_Rosetta_OCR_v0.2_<split>.json` for its image, follow the question as
    "Reference OCR tokens: a, b, c".
    """

    name = "textvqa"

    def __init__(self, data_root: str, split: str = "val", support_split: str | None = "train",
                 use_ocr: bool = False, image_dir: str = "train_images", limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, limit)
        self.use_ocr, self.image_dir = use_ocr, image_dir
        if not self._file(split).is_file():
            raise ScenarioDataError(f"scenario {self.name}: file not found: expected {self._file(split)}")

    def _file(self, split: str) -> Path:
        return self.data_root / f"TextVQA_0.5.1_{split}.json"

    def _ocr(self, split: str) -> dict[str, list[str]]:
        path = self.data_root / f"TextVQA_Rosetta_OCR_v0.2_{split}.json"
        rows = need(load_json(path, f"scenario {self.name}"), "data", str(path), list)
        out = {}
        for i, row in enumerate(rows):
            where = f"{path} data[{i}]"
            out[need_text(row, "image_id", where)] = [str(t) for t in need(row, "ocr_tokens", where, list)]
        return out

    def load(self, split: str) -> list[EvalSample]:
        path = self._file(split)
        data = need(load_json(path, f"scenario {self.name}"), "data", str(path), list)
        ocr: dict[str, list[str]] | None = None
        out = []
        for i, item in enumerate(data):
            where = f"{path} data[{i}]"
            image_id = need_text(item, "image_id", where)
            question = need_text(item, "question", where)
            if self.use_ocr:
                if "ocr_tokens" in item:
                    tokens = [str(t) for t in need(item, "ocr_tokens", where, list)]
                else:
                    ocr = self._ocr(split) if ocr is None else ocr
                    tokens = ocr.get(image_id, [])
                if tokens:
                    question = f"{question}\nReference OCR tokens: {', '.join(tokens)}"
            out.append(EvalSample(str(need(item, "question_id", where, (int, str))), question, [],
                                  human_answers(item, where),
                                  [MediaRef("image", str(self.data_root / self.image_dir / f"{image_id}.jpg"), "image_id")],
                                  "textvqa", {"image_id": image_id}))
        return out


@SCENARIOS.register("vizwiz")
class VizWiz(OfficialScenario):
    """VizWiz VQA: `<data_root>/Annotations/<split>.json` (or `annotations/`), a list of
    `{image, question, answers: [{answer}], answer_type, answerable}`; images `<data_root>/<split>/<image>`."""

    name = "vizwiz"

    def __init__(self, data_root: str, split: str = "val", support_split: str | None = "train",
                 limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, limit)
        self._file(split)  # fails early, naming the expected file

    def _file(self, split: str) -> Path:
        for folder in ("Annotations", "annotations"):
            path = self.data_root / folder / f"{split}.json"
            if path.is_file():
                return path
        raise ScenarioDataError(f"scenario {self.name}: file not found: expected "
                                f"{self.data_root / 'Annotations' / f'{split}.json'}")

    def load(self, split: str) -> list[EvalSample]:
        path = self._file(split)
        data = load_json(path, f"scenario {self.name}")
        if not isinstance(data, list):
            raise ScenarioDataError(f"{path}: expected a JSON list of questions, found {type(data).__name__}")
        out = []
        for i, item in enumerate(data):
            where = f"{path} [{i}]"
            image = need_text(item, "image", where)
            answerable = item.get("answerable")
            out.append(EvalSample(Path(image).stem, need_text(item, "question", where), [], human_answers(item, where),
                                  [MediaRef("image", str(self.data_root / split / image), "image")],
                                  str(item.get("answer_type") or "vqa"),
                                  {"answerable": None if answerable is None else bool(answerable)}))
        return out
