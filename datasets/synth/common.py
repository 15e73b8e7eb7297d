"""Pieces shared by the synthetic generators: seeded RNG streams, samples, task specs, JSON output."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

SPLITS = ("train", "test")
# Stable numeric codes so every (kind, split, sample) gets its own RNG stream: sample i is the same
# whatever the split size, and the held-out test split never depends on the train size.
KIND_CODES = {"shapes": 1, "video": 2, "points": 3, "digits": 4}
SPLIT_CODES = {"train": 1, "test": 2}


def sample_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    """The RNG for one sample: independent of how many samples the split has."""
    return np.random.default_rng([seed, KIND_CODES[kind], SPLIT_CODES[split], index])


@dataclass(frozen=True)
class TaskSpec:
    """One question type: its LAMM task type, the question text and the closed answer set."""

    task: str
    task_type: str
    question: str
    options: tuple[str, ...]  # empty for open-ended answers (detection boxes)
    weight: int = 1  # share of the kind's samples, as an integer ratio

    @property
    def chance(self) -> float | None:
        """Accuracy of uniform guessing over the options (None when open-ended)."""
        return round(1.0 / len(self.options), 4) if self.options else None

    def describe(self) -> dict[str, Any]:
        """The manifest entry for this task."""
        return {
            "task_type": self.task_type,
            "question": self.question,
            "options": list(self.options),
            "chance": self.chance,
        }


def task_schedule(specs: Sequence[TaskSpec]) -> list[TaskSpec]:
    """A repeating, interleaved pattern with each task `weight` times; sample i asks pattern[i % len]."""
    pattern: list[TaskSpec] = []
    remaining = {s.task: s.weight for s in specs}
    while any(remaining.values()):
        for s in specs:
            if remaining[s.task]:
                pattern.append(s)
                remaining[s.task] -= 1
    return pattern


def make_sample(
    sample_id: str,
    media_key: str,
    media_path: str,
    spec: TaskSpec,
    answer: str,
    meta: dict[str, Any],
    question: str | None = None,
    followups: Sequence[tuple[TaskSpec, str]] = (),
) -> dict[str, Any]:
    """A LAMM-format instruction sample: one question and its exact answer, then optional follow-up
    questions about the same media as further turns. `task`/`answer` describe the first question;
    `turn_tasks` names the task of every question in order."""
    conversations = []
    for s, a in [(spec, answer), *followups]:
        if s.options and a not in s.options:
            raise AssertionError(f"{sample_id}: answer {a!r} not in options of task {s.task!r}")
        q = question if s is spec and question else s.question
        conversations += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {
        "id": sample_id,
        media_key: media_path,
        "conversations": conversations,
        "turn_tasks": [spec.task, *(s.task for s, _ in followups)],
        "task_type": spec.task_type,
        "task": spec.task,
        "options": list(spec.options),
        "answer": answer,
        "meta": meta,
    }


def seeded_followups(rng: np.random.Generator, specs: Sequence[TaskSpec],
                     answer: Callable[[str], str]) -> list[tuple[TaskSpec, str]]:
    """Follow-up questions for `make_sample`: `specs` in a seeded order, each with `answer(task)`."""
    return [(specs[i], answer(specs[i].task)) for i in rng.permutation(len(specs))]


def write_json(path: Path, obj: Any) -> None:
    """Deterministic JSON (fixed key order from construction, UTF-8, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


@dataclass
class KindResult:
    """What one generator wrote: per-split sample lists plus the manifest description."""

    samples: dict[str, list[dict[str, Any]]]
    media: str
    tasks: dict[str, dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)


def balanced_answer(seed: int, kind: str, split: str, index: int, schedule: Sequence[TaskSpec]) -> str | None:
    """The answer sample `index` must have so every task's answers are balanced (None if open-ended).

    The k-th sample of a task gets option perm_c[k % n] with a fresh seeded permutation per block
    c = k // n of n samples: classes stay balanced to within one per split, in no fixed order.
    """
    spec = schedule[index % len(schedule)]
    if not spec.options:
        return None
    slots = [p for p, s in enumerate(schedule) if s.task == spec.task]
    k = (index // len(schedule)) * len(slots) + slots.index(index % len(schedule))
    n = len(spec.options)
    task_code = sorted({s.task for s in schedule}).index(spec.task)
    perm = np.random.default_rng([seed, KIND_CODES[kind], SPLIT_CODES[split], 1000 + task_code, k // n]).permutation(n)
    return spec.options[int(perm[k % n])]
