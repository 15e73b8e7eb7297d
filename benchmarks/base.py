"""The four contracts of a ChEF-style evaluation and the values that cross between them.

    Scenario    -> EvalSample            (what to ask, about which media, and the ground truth)
    Instruction -> Query                 (how to ask: phrasing, in-context examples, reasoning turns)
    Inferencer  -> Prediction            (how the model answers: generation, option scoring, turns)
    Metric      -> dict[str, float]      (how answers are scored, over the records of a whole run)

Each kind is a registry in `lamm.registry`; recipes name entries, never import paths.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from lamm.datasets.sample import MediaRef


@dataclass
class EvalSample:
    """One evaluation item. `options` is the closed answer set ([] = open-ended); `answer` its truth.

    `answer` is a string for classification/VQA/captioning (or a list of reference strings for
    captions and VQA), a number for counting, a list of `[label, x1, y1, x2, y2]` boxes (3D:
    `[label, x1, y1, z1, x2, y2, z2]`) for detection. `media` are data-pipeline references, loaded by
    the data pipeline's loaders.
    """

    id: str
    question: str
    options: list[str]
    answer: Any
    media: list[MediaRef] = field(default_factory=list)
    task: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Example:
    """One solved in-context example: a question (with its media) and the answer text."""

    question: str
    answer: str
    media: list[MediaRef] = field(default_factory=list)


@dataclass
class Query:
    """What the model is asked for one sample.

    `turns` are user messages sent in order (multi-turn and chain of thought have several; the model's
    reply to turn i is in the history of turn i+1); the first turn carries the sample's media.
    `examples` are in-context examples shown before the first turn. `labels[i]` is what the model
    should say to choose `options[i]` (the option itself unless an option map relabels it).
    """

    turns: list[str]
    media: list[MediaRef] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """One model answer. `probs` (per option, summing to 1) is set by option-scoring inferencers."""

    raw: str
    prompt: str
    probs: list[float] | None = None
    turns: list[str] = field(default_factory=list)  # replies to earlier turns (CoT reasoning, multi-turn)


class Scenario(abc.ABC):
    """A dataset adapter: yields EvalSamples in a fixed, deterministic order."""

    name: str = "scenario"
    modality: str | None = None  # the media modality ("image" | "video" | "pointcloud"), None = text-only

    @abc.abstractmethod
    def samples(self) -> list[EvalSample]:
        """Every evaluation sample, in a stable order (ids unique)."""

    def support(self) -> list[EvalSample]:
        """Samples that may serve as in-context examples (never the evaluated ones); default none."""
        return []

    def __iter__(self) -> Iterator[EvalSample]:
        return iter(self.samples())


class Instruction(abc.ABC):
    """Turns an EvalSample into a Query. `prepare` sees the scenario and model once before use."""

    name: str = "instruction"
    # A template (lamm.datasets.templates.Template) the queries must be rendered with, whatever the
    # run's own: prompt formats that write the whole prompt (few-shot). None: the run's template.
    template: Any = None

    def prepare(self, scenario: Scenario, model: Any) -> None:  # noqa: B027 - optional hook
        """Fit retrievers etc.; default nothing."""

    @abc.abstractmethod
    def query(self, sample: EvalSample) -> Query:
        """The query for one sample."""


class Inferencer(abc.ABC):
    """Runs the model on a batch of (sample, query) pairs; batched wherever the method allows."""

    name: str = "inferencer"
    needs_options: bool = False  # option scoring needs a closed answer set

    @abc.abstractmethod
    def __call__(self, model: Any, samples: Sequence[EvalSample], queries: Sequence[Query],
                 renderer: Any) -> list[Prediction]:
        """One Prediction per sample, in order."""


class Metric(abc.ABC):
    """Aggregates per-sample records (dicts as written to samples.jsonl) into named numbers.

    A record holds `id, task, options, labels, answer, raw, parsed, correct, probs, extra`.
    `parse(record)` turns the raw text into this metric's answer form (None = unparseable);
    `judge(record)` gives per-sample correctness (True/False) or None when the metric has no
    per-sample verdict (captions); the evaluator writes the first metric's parse and verdict.
    """

    name: str = "metric"

    def parse(self, record: dict[str, Any]) -> Any:
        """The answer in the form this metric compares (default: one of the options)."""
        from lamm.benchmarks.parsing import parse_option

        return parse_option(record["raw"], record.get("options") or [], record.get("labels") or None)

    def judge(self, record: dict[str, Any]) -> bool | None:
        """Whether one record is right; None if this metric cannot say per sample."""
        return None

    @abc.abstractmethod
    def compute(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Named values over all records."""

    def sample_scores(self, records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        """Per named value of `compute` that is a plain mean over records: each record's share (the
        bootstrap then resamples these vectorised); {} when none is (the default)."""
        return {}

    def resampled(self, records: Sequence[dict[str, Any]]) -> Callable[[Sequence[int]], dict[str, float]]:
        """`compute` over the records at the given indices (repeats allowed), for bootstrap replicates;
        a metric with costly preparation shared by every replicate overrides it to prepare once."""
        return lambda idx: self.compute([records[i] for i in idx])
