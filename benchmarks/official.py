"""What every scenario over an official dataset layout shares: a `data_root` folder laid out as the
dataset ships, an evaluated `split`, a support split (the demonstration pool of few-shot
instructions), and one-line errors that name the file and the field.

The scenarios themselves: `captions.py` (COCO, Flickr30k), `vqa.py` (VQAv2, OK-VQA, TextVQA, VizWiz),
`classification.py` (ImageNet, Hateful Memes), `mme.py`, `mmmu.py`. Their layouts are listed in
benchmarks/README.md; `lamm.benchmarks.testing.write_official_fixture` writes a tiny copy of each.
"""
from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, Sequence

from lamm.benchmarks.adapters import ScenarioDataError
from lamm.benchmarks.base import EvalSample, Scenario


def read_jsonl(path: Path, scenario: str) -> list[tuple[int, Any]]:
    """(line number, value) for each non-empty line of a JSON-lines file; one line naming it on an error."""
    if not path.is_file():
        raise ScenarioDataError(f"scenario {scenario}: file not found: expected {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ScenarioDataError(f"scenario {scenario}: malformed JSON in {path} line {number} ({exc.msg})") from None
    return rows


def need(obj: Any, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """`obj[key]`, checked to be a `kind`; else one line `<where>: field 'key' ...`."""
    if not isinstance(obj, dict):
        raise ScenarioDataError(f"{where}: expected an object with field {key!r}, found {type(obj).__name__}")
    if key not in obj or obj[key] is None:
        raise ScenarioDataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise ScenarioDataError(f"{where}: field {key!r} must be {names}, found {type(value).__name__}")
    return value


def need_text(obj: Any, key: str, where: str) -> str:
    """A field that must hold non-empty text (numbers are accepted and turned into text)."""
    value = need(obj, key, where, (str, int, float))
    if isinstance(value, bool) or not str(value).strip():
        raise ScenarioDataError(f"{where}: field {key!r} must be non-empty text, found {value!r}")
    return str(value)


class OfficialScenario(Scenario):
    """A dataset read from `data_root` as it ships; `split` is evaluated, `support_split` feeds few-shot."""

    name = "official"
    modality = "image"

    def __init__(self, data_root: str, split: str, support_split: str | Sequence[str] | None,
                 limit: int | None = None) -> None:
        self.data_root = Path(data_root)
        if not self.data_root.is_dir():  # checked here, so lamm-eval fails before loading the model
            raise ScenarioDataError(f"scenario {self.name}: data_root is not a folder: {self.data_root}")
        self.split, self.limit = split, limit
        if support_split is None:
            self.support_splits: list[str] = []
        else:
            self.support_splits = [support_split] if isinstance(support_split, str) else list(support_split)
        self._cache: dict[str, list[EvalSample]] = {}

    @abc.abstractmethod
    def load(self, split: str) -> list[EvalSample]:
        """Every sample of one split, in file order."""

    def _split(self, split: str) -> list[EvalSample]:
        if split not in self._cache:
            self._cache[split] = self.load(split)
        return self._cache[split]

    def samples(self) -> list[EvalSample]:
        rows = self._split(self.split)
        return rows[: self.limit] if self.limit else rows

    def support(self) -> list[EvalSample]:
        return [s for split in self.support_splits if split != self.split for s in self._split(split)]
