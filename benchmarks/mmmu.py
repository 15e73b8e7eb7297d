"""MMMU: multi-image multiple choice from the dataset's parquet release.

`<data_root>/<Subject>/<split>-NNNNN-of-NNNNN.parquet` (split dev, validation or test), rows
`{id, question, options, answer, image_1..image_7, question_type, subfield}`: `options` is the text
of a Python list (read with `ast.literal_eval`, which evaluates literals only), images are
`{bytes, path}` structs. Questions and options refer to images as `<image k>`; the sample's media
are the referenced images in order of first reference (then any image never referenced), and each
reference is renumbered to its position there, so `<image 1>` is always the first medium shown.
Open questions (question_type "open") have no options; `question_types` keeps some kinds only.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Sequence

from lamm.benchmarks.adapters import LETTERS, ScenarioDataError
from lamm.benchmarks.base import EvalSample
from lamm.benchmarks.official import OfficialScenario
from lamm.datasets.sample import MediaRef
from lamm.registry import SCENARIOS

IMAGE_REF = re.compile(r"<image (\d+)>")
MAX_IMAGES = 7


def read_parquet(path: Path) -> list[dict[str, Any]]:
    """The rows of a parquet file (pyarrow is imported only when MMMU is read)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ScenarioDataError(f"scenario mmmu: reading {path} needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors name no file; this names it
        raise ScenarioDataError(f"scenario mmmu: cannot read parquet file {path} ({' '.join(str(exc).split())[:200]})") from None


def literal_list(text: Any, where: str, key: str) -> list[str]:
    """A field holding a list, or the text of a Python list literal (as MMMU stores `options`)."""
    if isinstance(text, list):
        return [str(x) for x in text]
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list):
        raise ScenarioDataError(f"{where}: field {key!r} must be a list (or its text), found {str(text)[:60]!r}")
    return [str(x) for x in value]


def media_order(texts: Sequence[str], available: Sequence[int]) -> list[int]:
    """Image numbers in order of first reference in `texts`, then the unreferenced available ones."""
    order: list[int] = []
    for t in texts:
        for m in IMAGE_REF.finditer(t):
            k = int(m.group(1))
            if k not in order:
                order.append(k)
    return order + [k for k in available if k not in order]


@SCENARIOS.register("mmmu")
class MMMU(OfficialScenario):
    """MMMU's parquet folders: every subject (or `subjects`); split validation, support dev."""

    name = "mmmu"

    def __init__(self, data_root: str, split: str = "validation", support_split: str | None = "dev",
                 subjects: Sequence[str] | None = None, question_types: Sequence[str] | None = None,
                 limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, limit)
        self.subjects = list(subjects) if subjects else None
        self.question_types = list(question_types) if question_types else None
        if not self._files(split):
            raise ScenarioDataError(f"scenario mmmu: no {split} data: expected {self.data_root}/<Subject>/"
                                    f"{split}-00000-of-00001.parquet")

    def _files(self, split: str) -> list[Path]:
        folders = [self.data_root / s for s in self.subjects] if self.subjects else \
            sorted(p for p in self.data_root.iterdir() if p.is_dir())
        if self.subjects:
            for f in folders:
                if not f.is_dir():
                    raise ScenarioDataError(f"scenario mmmu: subject folder not found: expected {f}")
        return [p for f in folders for p in sorted(f.glob(f"{split}-*.parquet"))]

    def _sample(self, row: dict[str, Any], where: str, subject: str) -> EvalSample | None:
        for key in ("id", "question", "answer"):
            if row.get(key) is None:
                raise ScenarioDataError(f"{where}: missing field {key!r}")
        sid, qtype = str(row["id"]), str(row.get("question_type") or "multiple-choice")
        if self.question_types and qtype not in self.question_types:
            return None
        options = literal_list(row.get("options", "[]"), where, "options")
        images = {}
        for k in range(1, MAX_IMAGES + 1):
            cell = row.get(f"image_{k}")
            if cell is None:
                continue
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            if not isinstance(data, (bytes, bytearray)):
                raise ScenarioDataError(f"{where}: field 'image_{k}' must hold image bytes")
            suffix = Path(str(cell.get("path") or "") if isinstance(cell, dict) else "").suffix or ".png"
            images[k] = MediaRef("image", f"{sid}_image_{k}{suffix}", f"image_{k}", bytes(data))
        question = str(row["question"])
        order = media_order([question, *options], sorted(images))
        missing = [k for k in order if k not in images]
        if missing:
            raise ScenarioDataError(f"{where}: field 'question' refers to <image {missing[0]}> but image_{missing[0]} "
                                    "is empty")
        number = {k: j + 1 for j, k in enumerate(order)}
        renumber = lambda t: IMAGE_REF.sub(lambda m: f"<image {number[int(m.group(1))]}>", t)  # noqa: E731
        options = [renumber(o) for o in options]
        extra = {"subfield": row.get("subfield"), "question_type": qtype, "image_order": order}
        if options:
            letter = str(row["answer"]).strip()
            if letter not in LETTERS[: len(options)]:
                raise ScenarioDataError(f"{where}: field 'answer' must be a letter of the {len(options)} options, "
                                        f"found {letter!r}")
            answer: Any = options[LETTERS.index(letter)]
            extra["choice_style"] = "letters"
        else:
            text = str(row["answer"])
            answer = literal_list(text, where, "answer") if text.startswith("[") else text
        return EvalSample(sid, renumber(question), options, answer, [images[k] for k in order], subject, extra)

    def load(self, split: str) -> list[EvalSample]:
        out = []
        for path in self._files(split):
            for i, row in enumerate(read_parquet(path)):
                sample = self._sample(row, f"{path} row {i}", path.parent.name)
                if sample is not None:
                    out.append(sample)
        return out
