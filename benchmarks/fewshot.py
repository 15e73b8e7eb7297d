"""The `fewshot` instruction: Flamingo-style few-shot prompts with demonstrations from the scenario's
train split (`Scenario.support()`).

    shots       demonstrations per query (0 = zero-shot)
    retrieval   random (seeded per seed and sample id: shards, reruns and batch sizes agree) |
                rices (nearest support images by encoder features, cached on disk; lamm.benchmarks.rices)
    format      openflamingo | idefics (one text prompt, lamm.benchmarks.prompt_formats) |
                chat (the model's own template, demonstrations as earlier user/assistant turns)
    prompt      caption | vqa | classification | hateful_memes (which of the format's prompts)

Zero-shot in the openflamingo and idefics formats keeps OpenFlamingo's trick: `zero_shot_demos`
(2) demonstrations with their text only, image markers removed, so the model still sees the answer
format. The chosen demonstration ids are written to each record (`extra.examples`).
"""
from __future__ import annotations

from typing import Any

from lamm.benchmarks.base import EvalSample, Query, Scenario
from lamm.benchmarks.instructions import InContext, example_answer
from lamm.benchmarks.prompt_formats import FORMAT_NAMES, FORMATS, PROMPT_KINDS, FewShotPromptTemplate
from lamm.benchmarks.rices import ImageFeaturizer, cached_features, nearest
from lamm.registry import INSTRUCTIONS

RETRIEVALS = ("random", "rices")


def meme_text(sample: EvalSample) -> str:
    """The text written on a hateful meme (the scenario's `extra.text`, else its question)."""
    return str(sample.extra.get("text", sample.question))


def demo_answer(sample: EvalSample, kind: str) -> str:
    """A demonstration's answer: the first reference (captions stripped, as OpenFlamingo writes them)."""
    answer = example_answer(sample)
    return answer.strip() if kind == "caption" else answer


@INSTRUCTIONS.register("fewshot")
class FewShot(InContext):
    """Few-shot prompts in a model family's format (see the module docstring)."""

    name = "fewshot"

    def __init__(self, shots: int = 4, retrieval: str = "random", format: str = "openflamingo",  # noqa: A002
                 prompt: str = "vqa", seed: int = 0, rices: dict[str, Any] | None = None,
                 zero_shot_demos: int = 2, option_style: str = "none") -> None:
        if retrieval not in RETRIEVALS:
            raise ValueError(f"instruction fewshot: retrieval must be one of {', '.join(RETRIEVALS)}, found {retrieval!r}")
        if format not in FORMAT_NAMES:
            raise ValueError(f"instruction fewshot: format must be one of {', '.join(FORMAT_NAMES)}, found {format!r}")
        if prompt not in PROMPT_KINDS:
            raise ValueError(f"instruction fewshot: prompt must be one of {', '.join(PROMPT_KINDS)}, found {prompt!r}")
        if int(shots) < 0:
            raise ValueError(f"instruction fewshot: shots must be >= 0, found {shots}")
        rices = dict(rices or {})
        unknown = set(rices) - {"encoder", "cache_dir", "batch_size"}
        if unknown:
            raise ValueError(f"instruction fewshot: rices has unknown keys {sorted(unknown)}; "
                             "allowed: encoder, cache_dir, batch_size")
        self.shots, self.retrieval, self.format_name, self.prompt = int(shots), retrieval, format, prompt
        self.rices, self.zero_shot_demos = rices, int(zero_shot_demos)
        text_only = format != "chat" and self.shots == 0
        super().__init__("random", self.zero_shot_demos if text_only else self.shots, seed, option_style=option_style)
        self.text_only = text_only
        # The instruction's own template: the evaluator renders these prompts with it, not the run's.
        self.template = FewShotPromptTemplate(FORMATS[format], prompt) if format in FORMATS else None
        self._query_feats: dict[str, Any] = {}

    def prepare(self, scenario: Scenario, model: Any) -> None:
        self.pool = scenario.support()
        if not self.pool and self.k > 0:
            raise ValueError(f"instruction fewshot: scenario {scenario.name!r} has no train split to draw "
                             "demonstrations from (support() is empty); use shots=0 with format chat")
        if self.retrieval == "rices" and self.k > 0:
            self._prepare_rices(scenario, model)

    def _prepare_rices(self, scenario: Scenario, model: Any) -> None:
        encoder = self.rices.get("encoder", "model")
        featurize = ImageFeaturizer.of_model(model) if encoder == "model" else ImageFeaturizer.of_config(encoder)
        featurize.batch_size = int(self.rices.get("batch_size", featurize.batch_size))
        cache_dir = self.rices.get("cache_dir")
        name = str(getattr(scenario, "name", type(scenario).__name__))
        support = "+".join(getattr(scenario, "support_splits", None) or [str(getattr(scenario, "support_split", "train"))])
        self._feats = cached_features(featurize, self.pool, cache_dir, name, support)
        queries = scenario.samples()
        feats = cached_features(featurize, queries, cache_dir, name, str(getattr(scenario, "split", "eval")))
        self._query_feats = {s.id: feats[i] for i, s in enumerate(queries)}
        self._featurize = featurize

    def is_same(self, candidate: EvalSample, sample: EvalSample) -> bool:
        """The same id *and* image: ids of a train and a test split may coincide without being one sample."""
        return super().is_same(candidate, sample) and [m.path for m in candidate.media] == [m.path for m in sample.media]

    def select(self, sample: EvalSample) -> list[EvalSample]:
        """The demonstrations for one sample; RICES puts the most similar last (next to the query)."""
        if self.k == 0:
            return []
        if self.retrieval == "random":
            return super().select(sample)
        q = self._query_feats.get(sample.id)
        if q is None:  # a sample the scenario did not list at prepare time (a wrapper's copy)
            q = self._featurize([sample])[0]
        exclude = [i for i, s in enumerate(self.pool) if self.is_same(s, sample)]
        return [self.pool[i] for i in nearest(q, self._feats, self.k, exclude)]

    def query(self, sample: EvalSample) -> Query:
        if self.template is None:  # chat: demonstrations as earlier turns of the model's own template
            q = super().query(sample)
            q.extra["shots"] = self.shots
            return q
        demos = self.select(sample)
        fmt, kind = FORMATS[self.format_name], self.prompt
        text = "".join(fmt.demonstration(kind, demo_answer(ex, kind), question=ex.question, text=meme_text(ex),
                                         image=not self.text_only) for ex in demos)
        text += fmt.query(kind, question=sample.question, text=meme_text(sample))
        missing = [ex.id for ex in demos if not ex.media] if not self.text_only else []
        if missing:
            raise ValueError(f"instruction fewshot: demonstration {missing[0]!r} has no image")
        media = [] if self.text_only else [ex.media[0] for ex in demos]
        return Query([text], media + list(sample.media[:1]), labels=list(sample.options),
                     extra={"examples": [ex.id for ex in demos], "shots": self.shots, "option_style": "none"})
