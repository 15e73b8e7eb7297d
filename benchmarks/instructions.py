"""Instructions: how a sample is asked. Standard query, query pool, in-context examples, chain of thought,
option maps (instruction following) and multi-turn.

Options are shown in one of two styles: `text` ("Answer with one of: red, green, blue.") where the
model answers with the option itself, or `letters` ("Options: (A) red (B) green") where it answers with
the label. `auto` uses letters when the scenario marks its samples `choice_style: letters`
(ScienceQA, MMBench, SEED-Bench) and text otherwise (the synthetic scenarios).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from lamm.benchmarks.adapters import LETTERS
from lamm.benchmarks.base import EvalSample, Example, Instruction, Query, Scenario
from lamm.benchmarks.scenarios import stable_seed
from lamm.registry import INSTRUCTIONS

OPTION_STYLES = ("auto", "text", "letters", "none")


def option_block(options: Sequence[str], labels: Sequence[str], style: str) -> str:
    """How the options are listed after the question."""
    if not options or style == "none":
        return ""
    if style == "text":
        return " Answer with one of: " + ", ".join(options) + "."
    listed = " ".join(f"({lab}) {opt}" for lab, opt in zip(labels, options))
    return f"\nOptions: {listed}\nAnswer with the option's label."


def choose_style(sample: EvalSample, style: str) -> str:
    if style not in OPTION_STYLES:
        raise ValueError(f"instruction: option_style must be one of {', '.join(OPTION_STYLES)}, found {style!r}")
    if style == "auto":
        return "letters" if sample.extra.get("choice_style") == "letters" else "text"
    return style


def example_answer(sample: EvalSample, labels: Sequence[str] | None = None) -> str:
    """The text a solved example shows as its answer."""
    ans = sample.answer
    if sample.options and labels is not None and ans in sample.options:
        return labels[sample.options.index(ans)]
    if isinstance(ans, list) and ans and isinstance(ans[0], list):  # boxes
        return " ".join(f"{b[0]} [{', '.join(f'{v:.2f}' for v in b[1:])}]" for b in ans)
    if isinstance(ans, list):
        return str(ans[0])
    if isinstance(ans, float) and ans.is_integer():
        return str(int(ans))
    return str(ans)


@INSTRUCTIONS.register("standard")
class StandardQuery(Instruction):
    """The question, the options in the chosen style, and an optional fixed suffix."""

    name = "standard"

    def __init__(self, option_style: str = "auto", suffix: str = "") -> None:
        self.option_style, self.suffix = option_style, suffix

    def labels(self, sample: EvalSample, style: str) -> list[str]:
        return list(LETTERS[: len(sample.options)]) if style == "letters" else list(sample.options)

    def phrase(self, sample: EvalSample) -> str:
        return sample.question

    def query(self, sample: EvalSample) -> Query:
        style = choose_style(sample, self.option_style)
        labels = self.labels(sample, style)
        text = self.phrase(sample) + option_block(sample.options, labels, style) + self.suffix
        return Query([text], list(sample.media), labels=labels, extra={"option_style": style})


QUERY_POOL: tuple[str, ...] = (
    "{question}",
    "Question: {question}",
    "Look at the {media} carefully. {question}",
    "Based on the {media}, answer the question. {question}",
    "{question} Answer briefly.",
)
MEDIA_WORD = {"image": "image", "video": "video", "pointcloud": "point cloud", None: "input"}


@INSTRUCTIONS.register("query_pool")
class QueryPool(StandardQuery):
    """One of several phrasings, chosen by `query_id` (ChEF's query pool); `pool` replaces the default."""

    name = "query_pool"

    def __init__(self, query_id: int = 0, pool: Sequence[str] | None = None, option_style: str = "auto",
                 suffix: str = "") -> None:
        super().__init__(option_style, suffix)
        self.pool = list(pool or QUERY_POOL)
        if not 0 <= query_id < len(self.pool):
            raise ValueError(f"instruction query_pool: query_id {query_id} out of range 0..{len(self.pool) - 1}")
        self.query_id = query_id

    def phrase(self, sample: EvalSample) -> str:
        modality = sample.media[0].modality if sample.media else None
        return self.pool[self.query_id].format(question=sample.question, media=MEDIA_WORD[modality])


# -- option maps (instruction following) ---------------------------------------------------------

OPTION_MAPS = ("natural", "neutral", "unnatural")
NEUTRAL_LABELS = ("foo", "bar", "baz", "qux", "zap", "zip", "wug", "dax", "fep", "tup")


def map_labels(n: int, kind: str) -> list[str]:
    """Labels under an option map: natural A,B,C..; neutral nonsense words; unnatural letters reversed."""
    if kind == "natural":
        return list(LETTERS[:n])
    if kind == "neutral":
        if n > len(NEUTRAL_LABELS):
            raise ValueError(f"option map neutral has {len(NEUTRAL_LABELS)} labels; the sample has {n} options")
        return list(NEUTRAL_LABELS[:n])
    if kind == "unnatural":
        return list(reversed(LETTERS[:n]))
    raise ValueError(f"instruction option_map: map must be one of {', '.join(OPTION_MAPS)}, found {kind!r}")


@INSTRUCTIONS.register("option_map")
class OptionMap(StandardQuery):
    """Options relabelled (ChEF's instruction following): the model must answer with the mapped label.

    natural: (A) (B) (C); neutral: (foo) (bar) (baz); unnatural: (C) (B) (A) -- the first option is
    labelled with the last letter. `match_ratio` is the share of answers naming the right mapped label.
    """

    name = "option_map"

    def __init__(self, map: str = "natural", suffix: str = "") -> None:  # noqa: A002 - the recipe key
        super().__init__("letters", suffix)
        map_labels(2, map)  # validate early
        self.map = map

    def labels(self, sample: EvalSample, style: str) -> list[str]:
        return map_labels(len(sample.options), self.map)

    def query(self, sample: EvalSample) -> Query:
        q = super().query(sample)
        q.extra["option_map"] = self.map
        return q


# -- chain of thought and multi-turn -------------------------------------------------------------

@INSTRUCTIONS.register("cot")
class ChainOfThought(StandardQuery):
    """Two turns: the question asking for step-by-step reasoning, then a request for the final answer."""

    name = "cot"

    def __init__(self, option_style: str = "auto", reason: str = " Let's think step by step.",
                 answer: str = "So, what is the final answer?") -> None:
        super().__init__(option_style)
        self.reason, self.answer = reason, answer

    def query(self, sample: EvalSample) -> Query:
        q = super().query(sample)
        block = option_block(sample.options, q.labels, q.extra["option_style"])
        q.turns = [sample.question + self.reason, self.answer + block]
        return q


@INSTRUCTIONS.register("multi_turn")
class MultiTurn(StandardQuery):
    """Several user turns from templates (`{question}`, `{options}`, `{media}`); the last one is answered."""

    name = "multi_turn"

    def __init__(self, turns: Sequence[str] = ("Describe the {media} briefly.", "{question}{options}"),
                 option_style: str = "auto") -> None:
        super().__init__(option_style)
        if not turns:
            raise ValueError("instruction multi_turn: `turns` is empty")
        self.turn_templates = list(turns)

    def query(self, sample: EvalSample) -> Query:
        q = super().query(sample)
        block = option_block(sample.options, q.labels, q.extra["option_style"])
        modality = sample.media[0].modality if sample.media else None
        q.turns = [t.format(question=sample.question, options=block, media=MEDIA_WORD[modality])
                   for t in self.turn_templates]
        return q


# -- in-context examples -------------------------------------------------------------------------

RETRIEVERS = ("random", "fixed", "topk_text", "topk_image")


@INSTRUCTIONS.register("icl")
class InContext(StandardQuery):
    """`num_examples` solved examples from the scenario's support set before the question.

    Retrievers: random (seeded per sample id, so shards and reruns agree), fixed (`fixed_ids`, or
    the first ones), topk_text (cosine over TF-IDF of the question text, or over mean LLM input
    embeddings with `text_embedding: model`), topk_image (cosine over the model's own encoder
    features, mean-pooled). Without a support set the other evaluated samples serve (never itself).
    """

    name = "icl"

    def __init__(self, retriever: str = "random", num_examples: int = 2, seed: int = 0,
                 fixed_ids: Sequence[str] | None = None, text_embedding: str = "tfidf",
                 option_style: str = "auto") -> None:
        super().__init__(option_style)
        if retriever not in RETRIEVERS:
            raise ValueError(f"instruction icl: retriever must be one of {', '.join(RETRIEVERS)}, found {retriever!r}")
        if text_embedding not in ("tfidf", "model"):
            raise ValueError(f"instruction icl: text_embedding must be tfidf or model, found {text_embedding!r}")
        self.retriever, self.k, self.seed = retriever, int(num_examples), seed
        self.fixed_ids, self.text_embedding = list(fixed_ids or []), text_embedding
        self.pool: list[EvalSample] = []
        self._feats: torch.Tensor | None = None
        self._model: Any = None
        self._vectorizer: Any = None

    def prepare(self, scenario: Scenario, model: Any) -> None:
        self.pool = scenario.support() or scenario.samples()
        self._model = model
        if self.retriever == "topk_text":
            self._feats = self._text_features([s.question for s in self.pool], fit=True)
        elif self.retriever == "topk_image":
            self._feats = self._image_features(self.pool)

    def _text_features(self, texts: list[str], fit: bool = False) -> torch.Tensor:
        if self.text_embedding == "tfidf":
            from sklearn.feature_extraction.text import TfidfVectorizer

            if fit:
                self._vectorizer = TfidfVectorizer().fit(texts)
            feats = torch.tensor(self._vectorizer.transform(texts).toarray(), dtype=torch.float32)
        else:
            tok = self._model.tokenizer
            rows = []
            with torch.no_grad():
                for t in texts:
                    ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]])
                    rows.append(self._model.embed_text(ids)[0].float().mean(0))
            feats = torch.stack(rows)
        return torch.nn.functional.normalize(feats, dim=-1)

    def _image_features(self, samples: Sequence[EvalSample]) -> torch.Tensor:
        from lamm.benchmarks.rices import ImageFeaturizer

        modality = next((s.media[0].modality for s in samples if s.media), "image")
        return ImageFeaturizer.of_model(self._model, modality, batch_size=1)(samples)

    def is_same(self, candidate: EvalSample, sample: EvalSample) -> bool:
        """Whether a pool sample is the evaluated sample itself (or the sample a corrupted copy comes from)."""
        return candidate.id in (sample.id, sample.extra.get("source_id"))

    def select(self, sample: EvalSample) -> list[EvalSample]:
        """The examples for one sample, most similar first for the top-k retrievers."""
        cands = [i for i, s in enumerate(self.pool) if not self.is_same(s, sample)]
        k = min(self.k, len(cands))
        if k == 0:
            return []
        if self.retriever == "random":
            rng = np.random.default_rng(stable_seed(self.seed, sample.id))
            return [self.pool[cands[i]] for i in rng.choice(len(cands), size=k, replace=False)]
        if self.retriever == "fixed":
            if self.fixed_ids:
                by_id = {s.id: s for s in self.pool}
                missing = [i for i in self.fixed_ids if i not in by_id]
                if missing:
                    raise ValueError(f"instruction icl: fixed_ids not in the support set: {missing}")
                return [by_id[i] for i in self.fixed_ids if i != sample.id][:k]
            return [self.pool[i] for i in cands[:k]]
        q = (self._text_features([sample.question]) if self.retriever == "topk_text"
             else self._image_features([sample]))[0]
        sims = self._feats[cands] @ q
        # Stable order: by similarity, ties by position in the support set.
        order = sorted(range(len(cands)), key=lambda j: (-round(float(sims[j]), 6), cands[j]))[:k]
        return [self.pool[cands[j]] for j in order]

    def query(self, sample: EvalSample) -> Query:
        q = super().query(sample)
        examples = []
        chosen = self.select(sample)
        for ex in chosen:
            style = choose_style(ex, self.option_style)
            labels = self.labels(ex, style)
            text = ex.question + option_block(ex.options, labels, style)
            examples.append(Example(text, example_answer(ex, labels), list(ex.media)))
        q.examples = examples
        q.extra["examples"] = [e.id for e in chosen]
        return q
