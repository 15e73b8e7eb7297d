"""Closed-set scenarios over official layouts: ImageNet (class folders + a class-name list) and Hateful
Memes (JSON lines). Their options are the full answer set, for ranking by log-likelihood
(inferencer ppl): ImageNet's class names, Hateful Memes' yes/no (scored with `roc_auc` on the "yes"
probability, the challenge's metric).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lamm.benchmarks.adapters import ScenarioDataError
from lamm.benchmarks.base import EvalSample
from lamm.benchmarks.official import OfficialScenario, need, need_text, read_jsonl
from lamm.datasets.sample import MediaRef
from lamm.registry import SCENARIOS

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
WNID = re.compile(r"^n\d{8}$")
CLASS_FILES = ("classnames.txt", "LOC_synset_mapping.txt")


def read_class_names(path: Path, folders: list[str]) -> dict[str, str]:
    """Class folder -> class name, from `<wnid> <name>[, <synonym>...]` lines (LOC_synset_mapping.txt) or one
    name per line in the sorted order of the class folders (classnames.txt, e.g. CLIP's or OpenFlamingo's list).

    LOC names: the first name; where two classes share it, their whole synonym lists; where those are
    shared too (LOC's two "crane" classes), the name and the wnid ("crane (n02012849)"). A plain list must
    have distinct names (ranking needs them)."""
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if any(WNID.match(line.split()[0]) for _, line in lines):
        full: dict[str, str] = {}
        where: dict[str, int] = {}
        for n, line in lines:
            parts = line.split(maxsplit=1)
            if len(parts) < 2 or not WNID.match(parts[0]):
                raise ScenarioDataError(f"{path} line {n}: expected `<wnid> <name>[, <synonym>...]`, found {line!r}")
            full[parts[0]], where[parts[0]] = parts[1].strip(), n
        first = {w: name.split(",")[0].strip() for w, name in full.items()}
        names = {w: full[w] if list(first.values()).count(first[w]) > 1 else first[w] for w in full}
        names = {w: f"{v} ({w})" if list(names.values()).count(v) > 1 else v for w, v in names.items()}
    else:
        if len(lines) != len(folders):
            raise ScenarioDataError(f"{path}: {len(lines)} class names for {len(folders)} class folders (one name per "
                                    "line, in the sorted order of the folders, or `<wnid> <name>` lines)")
        names = {f: line for f, (_, line) in zip(folders, lines)}
        where = {f: n for f, (n, _) in zip(folders, lines)}
        seen: dict[str, str] = {}
        for w, name in names.items():
            if name in seen:
                raise ScenarioDataError(f"{path} line {where[w]}: class name {name!r} of {w} is also the name of "
                                        f"{seen[name]} (line {where[seen[name]]}); ranking needs distinct class names")
            seen[name] = w
    missing = [f for f in folders if f not in names]
    if missing:
        raise ScenarioDataError(f"{path}: no class name for class folder {missing[0]!r}")
    return names


@SCENARIOS.register("imagenet")
class ImageNet(OfficialScenario):
    """ImageNet as class folders: `<data_root>/<split>/<wnid>/<image>.JPEG`, names from
    `<data_root>/classnames.txt` or `<data_root>/LOC_synset_mapping.txt` (or `class_names`); options are
    every class name (sorted by wnid), the answer the folder's name; split val, support train."""

    name = "imagenet"
    question = "What is the main object in this image?"

    def __init__(self, data_root: str, split: str = "val", support_split: str | None = "train",
                 class_names: str | None = None, limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, limit)
        if class_names:
            self.names_file = self.data_root / class_names
        else:
            found = [self.data_root / f for f in CLASS_FILES if (self.data_root / f).is_file()]
            self.names_file = found[0] if found else self.data_root / CLASS_FILES[0]
        if not self.names_file.is_file():
            raise ScenarioDataError(f"scenario {self.name}: class-name list not found: expected {self.names_file} "
                                    f"(or {CLASS_FILES[1]})")
        self._folder(split)
        self._names: dict[str, str] | None = None

    def _folder(self, split: str) -> Path:
        folder = self.data_root / split
        if not folder.is_dir():
            raise ScenarioDataError(f"scenario {self.name}: split folder not found: expected {folder}/<wnid>/<image>")
        return folder

    def class_names(self) -> dict[str, str]:
        """Class folder (wnid) -> class name, in sorted folder order."""
        if self._names is None:
            folders = sorted(p.name for p in self._folder(self.split).iterdir() if p.is_dir())
            names = read_class_names(self.names_file, folders)
            self._names = {w: names[w] for w in sorted(names)}
        return self._names

    def load(self, split: str) -> list[EvalSample]:
        names = self.class_names()
        options = list(names.values())
        out = []
        for wnid_dir in sorted(p for p in self._folder(split).iterdir() if p.is_dir()):
            if wnid_dir.name not in names:
                raise ScenarioDataError(f"{self.names_file}: no class name for class folder {wnid_dir.name!r} "
                                        f"(found in {wnid_dir.parent})")
            for image in sorted(p for p in wnid_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                out.append(EvalSample(f"{wnid_dir.name}/{image.stem}", self.question, options, names[wnid_dir.name],
                                      [MediaRef("image", str(image), "image")], "classification",
                                      {"wnid": wnid_dir.name}))
        return out


def meme_label(item: Any, where: str) -> str:
    label = need(item, "label", where, int)
    if label not in (0, 1):
        raise ScenarioDataError(f"{where}: field 'label' must be 0 or 1, found {label!r}")
    return "yes" if label == 1 else "no"


@SCENARIOS.register("hateful_memes")
class HatefulMemes(OfficialScenario):
    """Hateful Memes: `<data_root>/<split>.jsonl` lines `{id, img, label, text}`, images `<data_root>/<img>`;
    split test_seen (the labelled phase-2 release; dev_seen also works), support train. Options yes/no,
    answer yes for label 1; the meme's text is in the question and in `extra.text`."""

    name = "hateful_memes"

    def __init__(self, data_root: str, split: str = "test_seen", support_split: str | None = "train",
                 limit: int | None = None) -> None:
        super().__init__(data_root, split, support_split, limit)
        if not self._file(split).is_file():
            raise ScenarioDataError(f"scenario {self.name}: file not found: expected {self._file(split)}")

    def _file(self, split: str) -> Path:
        return self.data_root / f"{split}.jsonl"

    def load(self, split: str) -> list[EvalSample]:
        path = self._file(split)
        out = []
        for line, item in read_jsonl(path, self.name):
            where = f"{path} line {line}"
            text = need(item, "text", where, str)
            out.append(EvalSample(str(need(item, "id", where, (int, str))),
                                  f'The meme\'s text reads "{text}". Is the meme hateful?', ["yes", "no"],
                                  meme_label(item, where),
                                  [MediaRef("image", str(self.data_root / need_text(item, "img", where)), "img")],
                                  "hateful_memes", {"text": text}))
        return out
