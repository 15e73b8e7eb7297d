"""MME: yes/no question pairs per image, in 14 category folders as the release ships them.

`<data_root>` is the release folder (MME_Benchmark_release_version). A category folder holds either
images with a `<stem>.txt` beside each, or `images/` and `questions_answer_YN/<stem>.txt`; each
text line is `question<TAB>Yes|No` (two per image). A sample's task is its category and
`extra.question_group` its image, which the `mme` metric scores together (acc+).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lamm.benchmarks.adapters import ScenarioDataError
from lamm.benchmarks.base import EvalSample
from lamm.benchmarks.official import OfficialScenario
from lamm.datasets.sample import MediaRef
from lamm.registry import SCENARIOS

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def _image_for(folder: Path, stem: str, text_file: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise ScenarioDataError(f"{text_file}: no image {stem}.jpg or {stem}.png in {folder}")


@SCENARIOS.register("mme")
class MME(OfficialScenario):
    """MME's release folder: every category folder present (or `categories`), two yes/no questions per image."""

    name = "mme"

    def __init__(self, data_root: str, split: str = "test", categories: Sequence[str] | None = None,
                 limit: int | None = None) -> None:
        super().__init__(data_root, split, None, limit)
        if split != "test":
            raise ValueError(f"scenario mme: MME has one split, test; found split {split!r}")
        known = (*PERCEPTION, *COGNITION)
        unknown = [c for c in categories or () if c not in known]
        if unknown:
            raise ValueError(f"scenario mme: unknown categories {unknown}; known: {', '.join(known)}")
        for c in categories or ():
            if not (self.data_root / c).is_dir():
                raise ScenarioDataError(f"scenario mme: category folder not found: expected {self.data_root / c}")
        self.categories = list(categories) if categories else [c for c in known if (self.data_root / c).is_dir()]
        if not self.categories:
            raise ScenarioDataError(f"scenario mme: no category folder in {self.data_root} (expected e.g. "
                                    f"{self.data_root / 'existence'}; categories: {', '.join(known)})")

    def _category(self, category: str) -> list[EvalSample]:
        folder = self.data_root / category
        if (folder / "questions_answer_YN").is_dir():
            texts, images = folder / "questions_answer_YN", folder / "images"
        else:
            texts, images = folder, folder
        out = []
        for text_file in sorted(texts.glob("*.txt")):
            image = _image_for(images, text_file.stem, text_file)
            group = f"{category}/{text_file.stem}"
            lines = [ln for ln in text_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
            for k, line in enumerate(lines):
                if "\t" not in line:
                    raise ScenarioDataError(f"{text_file} line {k + 1}: expected `question<TAB>answer`, found no tab")
                question, answer = (p.strip() for p in line.rsplit("\t", 1))
                if answer.lower() not in ("yes", "no"):
                    raise ScenarioDataError(f"{text_file} line {k + 1}: field 'answer' must be Yes or No, "
                                            f"found {answer!r}")
                out.append(EvalSample(f"{group}#{k}", question, ["yes", "no"], answer.lower(),
                                      [MediaRef("image", str(image), "image")], category,
                                      {"question_group": group}))
        return out

    def load(self, split: str) -> list[EvalSample]:
        return [s for c in self.categories for s in self._category(c)]
