"""Built-in offline scenarios over the synthetic data folder, POPE-style hallucination probes built from
its metadata, and the corruption wrapper used for robustness.

Records are parsed by the data pipeline's own LAMM parser (`parse_conversation_record`), so media
references, markers and errors behave exactly as in training.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lamm.benchmarks.base import EvalSample, Scenario
from lamm.datasets.formats.conversation import parse_conversation_record
from lamm.datasets.readers import Record
from lamm.datasets.sample import MARKER_RE, MediaRef
from lamm.registry import SCENARIOS

KIND_MODALITY = {"shapes": "image", "video": "video", "points": "pointcloud", "digits": "image"}
# Tasks whose answer is free text even though the generator lists a closed caption set.
OPEN_TASKS = {"caption", "bbox"}


def stable_seed(*parts: Any) -> int:
    """A 32-bit seed from strings (hash() is salted per process, so never use it for data)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "little")


def question_text(text: str) -> str:
    """Turn text without media markers."""
    return " ".join(MARKER_RE.sub(" ", text).split())


def ensure_synth(root: str | Path, kinds: Sequence[str], seed: int, sizes: dict[str, int] | None) -> Path:
    """The synthetic folder, generated (seeded, deterministic) for the kinds it lacks."""
    root = Path(root)
    missing = [k for k in kinds if not (root / k / "test.json").is_file()]
    if missing:
        from lamm.datasets.synth import generate

        # Default sizes are the generator's (= the training data config's), so a folder generated here is
        # exactly the one training would generate: evaluation never leaves a smaller train split behind.
        generate(root, seed=seed, sizes=sizes, kinds=missing)
    return root


def _read_split(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"synthetic split not found: expected {path} (generate it with `lamm synth --out "
                                f"{path.parent.parent}` or set scenario.generate=true)")
    return json.loads(path.read_text(encoding="utf-8"))


def _synth_answer(row: dict[str, Any]) -> Any:
    if row["task"] == "bbox":  # ground-truth boxes from the scene metadata, normalised like the answer text
        size = row["meta"]["image_size"]
        return [[f"{o['colour']} {o['shape']}", *(v / size for v in o["box"])] for o in row["meta"]["objects"]]
    if row["task"] == "caption":
        return [row["answer"]]
    return row["answer"]


def synth_samples(root: Path, kind: str, split: str, tasks: Sequence[str] | None) -> list[EvalSample]:
    """EvalSamples of one synthetic kind and split (optionally only some tasks), in file order."""
    path = root / kind / f"{split}.json"
    out = []
    for i, row in enumerate(_read_split(path)):
        if tasks and row["task"] not in tasks:
            continue
        sample = parse_conversation_record(Record(str(path), i, None, row), None)
        user = next(t for t in sample.turns if t.role == "user")
        options = [] if row["task"] in OPEN_TASKS else list(row["options"])
        out.append(EvalSample(
            id=sample.id, question=question_text(user.text), options=options, answer=_synth_answer(row),
            media=sample.media, task=row["task"],
            extra={"kind": kind, "task_type": row.get("task_type"), "meta": row.get("meta", {})},
        ))
    return out


@SCENARIOS.register("synth")
class SynthScenario(Scenario):
    """The built-in offline data (lamm synth): shapes, video, points, digits; test split evaluated,
    train split as the in-context example pool. Missing kinds are generated when `generate` is true."""

    name = "synth"

    def __init__(self, root: str = "data/synth", kinds: Sequence[str] = ("shapes",), split: str = "test",
                 support_split: str = "train", tasks: Sequence[str] | None = None, limit: int | None = None,
                 generate: bool = True, seed: int = 0, sizes: dict[str, int] | None = None) -> None:
        unknown = [k for k in kinds if k not in KIND_MODALITY]
        if unknown:
            raise ValueError(f"scenario synth: unknown kinds {unknown}; known: {', '.join(KIND_MODALITY)}")
        self.root = Path(root)
        self.kinds, self.split, self.support_split = list(kinds), split, support_split
        self.tasks, self.limit = list(tasks) if tasks else None, limit
        self.generate, self.seed, self.sizes = generate, seed, sizes
        modalities = {KIND_MODALITY[k] for k in self.kinds}
        self.modality = modalities.pop() if len(modalities) == 1 else None
        self._cache: dict[str, list[EvalSample]] = {}

    def _load(self, split: str) -> list[EvalSample]:
        if split not in self._cache:
            root = ensure_synth(self.root, self.kinds, self.seed, self.sizes) if self.generate else self.root
            rows = [s for k in self.kinds for s in synth_samples(root, k, split, self.tasks)]
            self._cache[split] = rows
        return self._cache[split]

    def samples(self) -> list[EvalSample]:
        rows = self._load(self.split)
        return rows[: self.limit] if self.limit else rows

    def support(self) -> list[EvalSample]:
        return self._load(self.support_split)


def _synth_kind(kind: str):
    def factory(**kwargs: Any) -> SynthScenario:
        kwargs.setdefault("kinds", (kind,))
        return SynthScenario(**kwargs)

    factory.__doc__ = f"The synthetic {kind} scenario (`synth` with kinds=[{kind}])."
    factory.__wrapped__ = SynthScenario  # inspect.signature shows SynthScenario's keys (recipe checks bind to them)
    return factory


for _kind in KIND_MODALITY:
    SCENARIOS.register(f"synth_{_kind}")(_synth_kind(_kind))


# -- hallucination (POPE over the synthetic shapes) ----------------------------------------------

POPE_NEGATIVES = ("random", "popular", "adversarial")


@SCENARIOS.register("synth_pope")
class SynthPopeScenario(Scenario):
    """POPE-style yes/no probes "Is there a <colour> <shape> in the image?" over synthetic shapes.

    Half the questions (alternating) name an object in the scene (answer yes); the others name an
    absent one chosen by `negatives`: random (uniform over absent colour-shape pairs), popular (the
    split's most frequent pairs that are absent), adversarial (absent pairs that share the shape or the
    colour of a present object: the closest confusions a one-object scene allows).
    """

    name = "synth_pope"
    modality = "image"

    def __init__(self, root: str = "data/synth", split: str = "test", negatives: str = "random",
                 limit: int | None = None, generate: bool = True, seed: int = 0,
                 sizes: dict[str, int] | None = None) -> None:
        if negatives not in POPE_NEGATIVES:
            raise ValueError(f"scenario synth_pope: negatives must be one of {', '.join(POPE_NEGATIVES)}, "
                             f"found {negatives!r}")
        self.base = SynthScenario(root, ("shapes",), split, tasks=None, generate=generate, seed=seed, sizes=sizes)
        self.negatives, self.limit, self.seed = negatives, limit, seed

    def samples(self) -> list[EvalSample]:
        from lamm.datasets.synth.shapes import COLOURS, SHAPES

        pairs = [(c, s) for c in COLOURS for s in SHAPES]
        base = self.base.samples()
        freq = Counter((o["colour"], o["shape"]) for b in base for o in b.extra["meta"]["objects"])
        popular = sorted(pairs, key=lambda p: (-freq[p], pairs.index(p)))
        out = []
        for i, b in enumerate(base):
            present = {(o["colour"], o["shape"]) for o in b.extra["meta"]["objects"]}
            absent = [p for p in pairs if p not in present]
            rng = np.random.default_rng(stable_seed(self.seed, self.negatives, b.id))
            if i % 2 == 0:
                obj, answer = sorted(present)[int(rng.integers(len(present)))], "yes"
            else:
                if self.negatives == "random":
                    obj = absent[int(rng.integers(len(absent)))]
                elif self.negatives == "popular":
                    obj = next(p for p in popular if p not in present)
                else:
                    close = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
                    obj = close[int(rng.integers(len(close)))]
                answer = "no"
            out.append(EvalSample(
                id=f"{b.id}|pope", question=f"Is there a {obj[0]} {obj[1]} in the image?", options=["yes", "no"],
                answer=answer, media=b.media, task=f"pope_{self.negatives}",
                extra={"object": list(obj), "negatives": self.negatives},
            ))
        return out[: self.limit] if self.limit else out


# -- robustness (corrupted copies of another scenario) ----------------------------------------------

CORRUPTIONS = ("clean", "image", "text", "both")


def corrupt_text(text: str, seed: int, rate: float = 0.3) -> str:
    """Typos: swap two inner letters in about `rate` of the words longer than three letters."""
    rng = np.random.default_rng(seed)
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and w.isalpha() and rng.random() < rate:
            j = int(rng.integers(1, len(w) - 2))
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def corrupt_media(ref: MediaRef, seed: int, severity: float) -> MediaRef:
    """An in-memory corrupted copy: images get Gaussian noise and blur, point clouds jitter and dropout."""
    from lamm.datasets.media import load_media

    rng = np.random.default_rng(seed)
    if ref.modality == "image":
        from PIL import Image, ImageFilter

        img = load_media(ref).filter(ImageFilter.GaussianBlur(radius=1.0 * severity))
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 40 * severity, size=(img.height, img.width, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        return MediaRef("image", os.path.splitext(ref.path)[0] + ".corrupt.png", ref.field, buf.getvalue())
    if ref.modality == "pointcloud":
        pts = load_media(ref)
        keep = rng.random(len(pts)) > 0.3 * severity
        pts = pts[keep].copy()
        pts[:, :3] += rng.normal(0, 0.05 * severity, size=pts[:, :3].shape).astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, pts)
        return MediaRef("pointcloud", os.path.splitext(ref.path)[0] + ".corrupt.npy", ref.field, buf.getvalue())
    raise ValueError(f"scenario corrupted: no {ref.modality} corruption (image and pointcloud are supported)")


@SCENARIOS.register("corrupted")
class CorruptedScenario(Scenario):
    """Each sample of an inner scenario in several copies: clean, image-corrupted, text-corrupted, both.

    Ids become `<id>|<corruption>`; `extra.corruption` names the copy (the `rrm` metric groups by it).
    Corruptions are seeded by the sample id, so every run and every rank sees the same copies.
    """

    name = "corrupted"

    def __init__(self, scenario: dict[str, Any], corruptions: Sequence[str] = CORRUPTIONS,
                 severity: float = 1.0, seed: int = 0) -> None:
        bad = [c for c in corruptions if c not in CORRUPTIONS]
        if bad:
            raise ValueError(f"scenario corrupted: unknown corruptions {bad}; known: {', '.join(CORRUPTIONS)}")
        if "clean" not in corruptions:
            corruptions = ("clean", *corruptions)  # RRM needs the clean accuracy
        from lamm.benchmarks.build import build_scenario

        self.inner = build_scenario(scenario)
        self.modality = self.inner.modality
        self.corruptions, self.severity, self.seed = list(corruptions), severity, seed

    def samples(self) -> list[EvalSample]:
        out = []
        for s in self.inner.samples():
            for c in self.corruptions:
                seed = stable_seed(self.seed, c, s.id)
                media = [corrupt_media(m, seed, self.severity) for m in s.media] if c in ("image", "both") else s.media
                question = corrupt_text(s.question, seed) if c in ("text", "both") else s.question
                out.append(EvalSample(f"{s.id}|{c}", question, s.options, s.answer, list(media), s.task,
                                      {**s.extra, "corruption": c, "source_id": s.id}))
        return out

    def support(self) -> list[EvalSample]:
        return self.inner.support()
