"""Adapters for benchmark layouts researchers already have on disk.

- `lamm_bench`: LAMM's benchmark folder, `<root>/meta_file/{Task}_{Dataset}.json`, media paths relative
  to `<root>` (or `media_root`). Supported (task, dataset): VQA ScienceQA (`query`, `gt_choice`,
  `gt_choices`), Classification CIFAR10 (`label`), Caption flickr30k (`sentences`), Detection VOC2012
  (`object: [{label, bbox: [x1, y1, x2, y2]}]`), Detection ScanNet (`pcl`, `query`, `object: [{label,
  bbox: [x1, y1, z1, x2, y2, z2]}]`, axis-aligned 3D boxes, min corner then max corner), Counting FSC147
  (`num`), OCR SVT (`word_list`), VQA3D ScanQA (`pcl`, `query`, `answers`), Classification3D ScanNet
  (`pcl`, `label`). Other (task, dataset) pairs are read by task family, so a new LAMM dataset of a
  known task works without code; detection boxes are 2D or 3D by their length (4 or 6 numbers).
- `mmbench`: MMBench TSV (`index, question, hint, A..D, answer, category, image` as base64), with
  circular evaluation: a question with n options is asked n times with the options rotated, and
  counts as right only if every rotation is (`accuracy` reports `circular_accuracy`).
- `pope`: POPE JSON lines (`question_id, image, text, label`), one file per negative kind.
- `seed_bench`: SEED-Bench JSON (`questions: [{question_id, question, choice_a..d, answer, data_id,
  data_type, question_type_id}]`), image questions by default.
"""
from __future__ import annotations

import base64
import csv
import glob
import json
import os
from pathlib import Path
from typing import Any, Sequence

from lamm.benchmarks.base import EvalSample, Scenario
from lamm.datasets.sample import MediaRef
from lamm.registry import SCENARIOS

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class ScenarioDataError(ValueError):
    """A benchmark folder or file does not have the expected layout (one line: what and where)."""


def load_json(path: Path, what: str) -> Any:
    """A JSON file, or one line `<what>: ...` naming it (missing file, malformed JSON)."""
    if not path.is_file():
        raise ScenarioDataError(f"{what}: file not found: expected {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ScenarioDataError(f"{what}: malformed JSON in {path} (line {exc.lineno}: {exc.msg})") from None


def _need(item: dict, key: str | Sequence[str], where: str) -> Any:
    keys = [key] if isinstance(key, str) else list(key)
    for k in keys:
        if k in item:
            return item[k]
    raise ScenarioDataError(f"{where}: missing field {' or '.join(map(repr, keys))}")


def _box(obj: Any, where: str) -> list[Any]:
    """`[label, *bbox]` of one detection object; bbox = 4 numbers (2D) or 6 (3D: min corner, max corner)."""
    label = str(_need(obj, "label", where))
    bbox = _need(obj, "bbox", where)
    try:
        coords = [float(v) for v in bbox]
    except (TypeError, ValueError):
        coords = []
    if len(coords) not in (4, 6):
        found = f"{len(coords)} numbers" if coords else repr(bbox)[:60]
        raise ScenarioDataError(f"{where}: field 'bbox' of object {label!r} must hold 4 numbers [x1, y1, x2, y2] "
                                f"or 6 [x1, y1, z1, x2, y2, z2], found {found}")
    return [label, *coords]


@SCENARIOS.register("lamm_bench")
class LammBenchScenario(Scenario):
    """LAMM's benchmark folder: `<root>/meta_file/{task}_{dataset}.json`."""

    name = "lamm_bench"

    def __init__(self, root: str, task: str, dataset: str, media_root: str | None = None,
                 options: Sequence[str] | None = None, limit: int | None = None) -> None:
        self.root = Path(root)
        self.task, self.dataset = task, dataset
        self.media_root = Path(media_root) if media_root else self.root
        self.options, self.limit = list(options) if options else None, limit
        self.meta = self.root / "meta_file" / f"{task}_{dataset}.json"
        if not self.meta.is_file():  # checked here too, so lamm-eval fails before loading the model
            raise ScenarioDataError(f"scenario lamm_bench ({task}_{dataset}): meta file not found: expected {self.meta}")
        self.modality = "pointcloud" if task.endswith("3D") or dataset.lower().startswith("scan") else "image"

    def _media(self, item: dict, where: str) -> list[MediaRef]:
        for key, modality in (("image", "image"), ("pcl", "pointcloud"), ("pointcloud", "pointcloud")):
            if key in item:
                path = item[key]
                return [MediaRef(modality, path if os.path.isabs(path) else str(self.media_root / path), key)]
        raise ScenarioDataError(f"{where}: missing field 'image' or 'pcl'")

    def samples(self) -> list[EvalSample]:
        data = load_json(self.meta, f"scenario lamm_bench ({self.task}_{self.dataset})")
        if not isinstance(data, list):
            raise ScenarioDataError(f"{self.meta}: expected a JSON list of samples, found {type(data).__name__}")
        family = self.task.lower().removesuffix("3d")
        labels = self.options
        if family == "classification" and labels is None:
            labels = CIFAR10 if self.dataset.lower() == "cifar10" else sorted({str(d.get("label")) for d in data})
        out = []
        box_sizes: dict[int, str] = {}  # numbers per detection box -> the first sample with that size
        for i, item in enumerate(data):
            sid = str(item.get("id", i))
            where = f"{self.meta} sample {sid!r}"
            media = self._media(item, where)
            extra = {"task_type": self.task, "dataset": self.dataset}
            if family == "vqa" and "gt_choices" in item:  # ScienceQA-style multiple choice
                choices = [str(c) for c in _need(item, "gt_choices", where)]
                gt = int(_need(item, "gt_choice", where))
                if not 0 <= gt < len(choices):
                    raise ScenarioDataError(f"{where}: gt_choice {gt} out of range for {len(choices)} gt_choices")
                s = EvalSample(sid, str(_need(item, "query", where)), choices, choices[gt], media, "vqa",
                               {**extra, "choice_style": "letters"})
            elif family == "vqa":  # open VQA (ScanQA): a list of reference answers
                answers = _need(item, ("answers", "answer", "gt"), where)
                answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
                s = EvalSample(sid, str(_need(item, ("query", "question"), where)), [], answers, media, "vqa", extra)
            elif family == "classification":
                label = str(_need(item, "label", where))
                q = item.get("query") or ("What object is this?" if self.modality == "pointcloud"
                                          else "What is the category of the main object in the image?")
                s = EvalSample(sid, q, list(labels), label, media, "classification", extra)
            elif family == "caption":
                refs = _need(item, ("sentences", "captions", "caption"), where)
                refs = [refs] if isinstance(refs, str) else [str(r) for r in refs]
                s = EvalSample(sid, item.get("query") or "Describe the image in one sentence.", [], refs, media,
                               "caption", extra)
            elif family == "detection":  # VOC2012: 2D boxes; ScanNet: 3D boxes (the box length decides)
                boxes = [_box(o, where) for o in _need(item, ("object", "objects"), where)]
                for box in boxes:
                    box_sizes.setdefault(len(box) - 1, sid)
                if len(box_sizes) > 1:
                    raise ScenarioDataError(f"{where}: field 'bbox' mixes 2D and 3D boxes in one file (sample "
                                            f"{box_sizes[4]!r} has 4 numbers, sample {box_sizes[6]!r} has 6)")
                q = item.get("query") or ("Detect all objects in the point cloud and give their 3D boxes."
                                          if self.modality == "pointcloud"
                                          else "Detect all objects in the image and give their boxes.")
                s = EvalSample(sid, q, [], boxes, media, "detection", extra)
            elif family == "counting":
                num = _need(item, ("num", "count", "gt"), where)
                s = EvalSample(sid, item.get("query") or "How many objects are there in the image?", [], float(num),
                               media, "counting", extra)
            elif family == "ocr":
                words = _need(item, ("word_list", "words", "text"), where)
                words = [words] if isinstance(words, str) else [str(w) for w in words]
                s = EvalSample(sid, item.get("query") or "What text is in the image?", [], words, media, "ocr", extra)
            else:
                raise ScenarioDataError(f"scenario lamm_bench: unknown task {self.task!r} in {self.meta.name}; known "
                                        "task families: VQA, Classification, Caption, Detection, Counting, OCR")
            out.append(s)
        return out[: self.limit] if self.limit else out


@SCENARIOS.register("mmbench")
class MMBenchScenario(Scenario):
    """MMBench TSV with base64 images; `circular: true` asks each question once per option rotation."""

    name = "mmbench"
    modality = "image"

    def __init__(self, path: str, circular: bool = True, limit: int | None = None) -> None:
        self.path, self.circular, self.limit = Path(path), circular, limit
        if not self.path.is_file():
            raise ScenarioDataError(f"scenario mmbench: TSV not found: expected {self.path}")

    def samples(self) -> list[EvalSample]:
        if not self.path.is_file():
            raise ScenarioDataError(f"scenario mmbench: TSV not found: expected {self.path}")
        with open(self.path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        out = []
        for n, row in enumerate(rows[: self.limit] if self.limit else rows):
            where = f"{self.path} row {n + 2}"
            idx = str(_need(row, "index", where))
            opts = [row[c] for c in "ABCD" if row.get(c) not in (None, "", "nan")]
            answer_letter = str(_need(row, "answer", where)).strip()
            if answer_letter not in LETTERS[: len(opts)]:
                raise ScenarioDataError(f"{where}: answer {answer_letter!r} is not one of {LETTERS[:len(opts)]}")
            answer = opts[LETTERS.index(answer_letter)]
            try:
                image = base64.b64decode(_need(row, "image", where), validate=True)
            except ValueError:
                raise ScenarioDataError(f"{where}: field 'image' is not valid base64") from None
            hint = row.get("hint") or ""
            question = f"{hint}\n{row['question']}".strip() if hint and hint != "nan" else row["question"]
            media = [MediaRef("image", f"mmbench_{idx}.png", "image", image)]
            for k in range(len(opts) if self.circular else 1):
                rotated = opts[k:] + opts[:k]
                out.append(EvalSample(f"{idx}|r{k}" if self.circular else idx, question, rotated, answer, media,
                                      row.get("category") or "mmbench",
                                      {"choice_style": "letters", "circular_group": idx}))
        return out


@SCENARIOS.register("pope")
class PopeScenario(Scenario):
    """POPE yes/no questions: `<root>/<prefix>_pope_<negatives>.json` (JSON lines), images under `image_root`."""

    name = "pope"
    modality = "image"

    def __init__(self, root: str, negatives: str = "random", image_root: str | None = None,
                 file: str | None = None, limit: int | None = None) -> None:
        self.root, self.negatives = Path(root), negatives
        self.image_root = Path(image_root) if image_root else self.root
        self.file, self.limit = file, limit

    def _path(self) -> Path:
        if self.file:
            return Path(self.file) if os.path.isabs(self.file) else self.root / self.file
        hits = sorted(glob.glob(str(self.root / f"*pope_{self.negatives}.json")))
        if not hits:
            raise ScenarioDataError(f"scenario pope: no question file: expected {self.root}/<name>_pope_{self.negatives}.json")
        return Path(hits[0])

    def samples(self) -> list[EvalSample]:
        path = self._path()
        if not path.is_file():
            raise ScenarioDataError(f"scenario pope: question file not found: expected {path}")
        out = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_no}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ScenarioDataError(f"{where}: malformed JSON ({exc.msg})") from None
            label = str(_need(item, "label", where)).lower()
            if label not in ("yes", "no"):
                raise ScenarioDataError(f"{where}: label must be yes or no, found {label!r}")
            out.append(EvalSample(str(_need(item, "question_id", where)), str(_need(item, "text", where)),
                                  ["yes", "no"], label,
                                  [MediaRef("image", str(self.image_root / _need(item, "image", where)), "image")],
                                  f"pope_{self.negatives}", {"negatives": self.negatives}))
        return out[: self.limit] if self.limit else out


@SCENARIOS.register("seed_bench")
class SeedBenchScenario(Scenario):
    """SEED-Bench multiple choice JSON; images at `<image_root>/<data_id>`."""

    name = "seed_bench"
    modality = "image"

    def __init__(self, path: str, image_root: str | None = None, data_types: Sequence[str] = ("image",),
                 limit: int | None = None) -> None:
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root else self.path.parent
        self.data_types, self.limit = list(data_types), limit

    def samples(self) -> list[EvalSample]:
        data = load_json(self.path, "scenario seed_bench")
        types = {str(v): k for k, v in data.get("question_type", {}).items()} if isinstance(data, dict) else {}
        questions = _need(data, "questions", str(self.path)) if isinstance(data, dict) else data
        out = []
        for q in questions:
            where = f"{self.path} question {q.get('question_id')!r}"
            if q.get("data_type", "image") not in self.data_types:
                continue
            opts = [str(_need(q, f"choice_{c}", where)) for c in "abcd" if f"choice_{c}" in q]
            letter = str(_need(q, "answer", where)).strip().upper()
            if letter not in LETTERS[: len(opts)]:
                raise ScenarioDataError(f"{where}: answer {letter!r} is not one of {LETTERS[:len(opts)]}")
            task = types.get(str(q.get("question_type_id")), str(q.get("question_type_id", "seed")))
            out.append(EvalSample(str(_need(q, "question_id", where)), str(_need(q, "question", where)), opts,
                                  opts[LETTERS.index(letter)],
                                  [MediaRef("image", str(self.image_root / _need(q, "data_id", where)), "data_id")],
                                  task, {"choice_style": "letters"}))
        return out[: self.limit] if self.limit else out


@SCENARIOS.register("json_qa")
class JsonQAScenario(Scenario):
    """Generic questions from JSON (a list) or JSONL: `{id, question, options?, answer, image|video|pcl?, task?}`.

    Without media keys this is a text-only scenario, the kind a plain HF causal LM can be evaluated on.
    """

    name = "json_qa"

    def __init__(self, path: str, media_root: str | None = None, limit: int | None = None) -> None:
        self.path = Path(path)
        self.media_root = Path(media_root) if media_root else self.path.parent
        self.limit = limit

    def samples(self) -> list[EvalSample]:
        if not self.path.is_file():
            raise ScenarioDataError(f"scenario json_qa: file not found: expected {self.path}")
        text = self.path.read_text(encoding="utf-8")
        try:
            rows = ([json.loads(x) for x in text.splitlines() if x.strip()] if self.path.suffix == ".jsonl"
                    else json.loads(text))
        except json.JSONDecodeError as exc:
            raise ScenarioDataError(f"scenario json_qa: malformed JSON in {self.path} ({exc.msg})") from None
        out = []
        modalities = set()
        for i, item in enumerate(rows):
            where = f"{self.path} sample #{i}"
            media = []
            for key, modality in (("image", "image"), ("video", "video"), ("pcl", "pointcloud")):
                if item.get(key):
                    media.append(MediaRef(modality, str(self.media_root / item[key]), key))
                    modalities.add(modality)
            options = [str(o) for o in item.get("options") or []]
            answer = _need(item, "answer", where)
            if options and str(answer) not in options:
                raise ScenarioDataError(f"{where}: answer {answer!r} is not one of its options {options}")
            out.append(EvalSample(str(item.get("id", i)), str(_need(item, "question", where)), options,
                                  str(answer) if options else answer, media, str(item.get("task", "qa")),
                                  {"choice_style": item["choice_style"]} if "choice_style" in item else {}))
        self.modality = modalities.pop() if len(modalities) == 1 else None
        return out[: self.limit] if self.limit else out
