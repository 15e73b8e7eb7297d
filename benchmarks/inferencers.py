"""Inferencers: how the model answers. Batched direct generation, batched option scoring (PPL),
multi-turn, chain of thought.

They use only the model's public boundary: `generate` and `loglikelihood`. Option scoring scores
every candidate of every sample of a batch at once (up to `max_rows` candidate rows); the model runs
each prompt once and shares its KV cache with the candidates when its fusion allows, full
prompt+candidate rows otherwise. It scores only the candidate's tokens (and the end-of-turn token,
so "1" and "12" are told apart), and turns the summed log-likelihoods into per-option probabilities
by softmax (`length_norm: true` uses the mean log-likelihood per token instead, ChEF's option).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from lamm.benchmarks.base import EvalSample, Inferencer, Prediction, Query
from lamm.registry import INFERENCERS


def _texts(tok: Any, rows: torch.Tensor) -> list[str]:
    return [t.strip() for t in tok.batch_decode(rows, skip_special_tokens=True)]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def generate_texts(model: Any, renderer: Any, items: Sequence[tuple], max_new_tokens: int) -> tuple[list[str], list[str]]:
    """Greedy replies for (id, query, replies, upto) items, in one batched generate call."""
    batch, prompts = renderer.generation_batch(items)
    out = model.generate(batch.to(_device(model)), max_new_tokens=max_new_tokens, eos_token_id=renderer.eos_ids)
    return [renderer.template.reply(t) for t in _texts(model.tokenizer, out.cpu())], prompts


@torch.no_grad()
def option_loglik(model: Any, renderer: Any, items: Sequence[tuple], max_rows: int = 64,
                  length_norm: bool = False, shared_prefix: bool = True) -> tuple[list[list[float]], list[str]]:
    """Per-sample lists of candidate log-likelihoods for (id, query, replies, upto, candidates) items.

    `shared_prefix: false` makes the model score full prompt+candidate rows even when its fusion
    could share the prompt's KV cache (both score the same tokens).
    """
    scores: list[list[float]] = []
    prompts: list[str] = []
    chunk: list[tuple] = []

    def flush() -> None:
        if not chunk:
            return
        batch, p, cands = renderer.prompt_and_candidates(chunk)
        scores.extend(model.loglikelihood(batch.to(_device(model)), cands, mean=length_norm,
                                          share_prompt_cache=shared_prefix))
        prompts.extend(p)
        chunk.clear()

    # A sample with more candidates than `max_rows` (ImageNet's 1000 classes) is scored in slices of its
    # candidates, so no pass holds more than `max_rows` copies of a prompt's cache.
    slices = [(i, item[:4] + (list(item[4][s:s + max_rows]),)) for i, item in enumerate(items)
              for s in range(0, max(1, len(item[4])), max_rows)]
    rows_in_chunk = 0
    for _, item in slices:
        n = len(item[4])
        if chunk and rows_in_chunk + n > max_rows:
            flush()
            rows_in_chunk = 0
        chunk.append(item)
        rows_in_chunk += n
    flush()
    per_sample: list[list[float]] = [[] for _ in items]
    first_prompt: list[str | None] = [None] * len(items)
    for (i, _), sc, p in zip(slices, scores, prompts):
        per_sample[i].extend(sc)
        first_prompt[i] = first_prompt[i] if first_prompt[i] is not None else p
    return per_sample, [p or "" for p in first_prompt]


def softmax(values: Sequence[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    return torch.softmax(t, 0).tolist()


@INFERENCERS.register("direct")
class DirectGeneration(Inferencer):
    """Greedy generation for the whole batch at once (left padding, KV cache)."""

    name = "direct"

    def __init__(self, max_new_tokens: int = 16) -> None:
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, model: Any, samples: Sequence[EvalSample], queries: Sequence[Query], renderer: Any) -> list[Prediction]:
        if any(len(q.turns) > 1 for q in queries):
            return MultiTurnInferencer(self.max_new_tokens, self.max_new_tokens)(model, samples, queries, renderer)
        texts, prompts = generate_texts(model, renderer, [(s.id, q, [], None) for s, q in zip(samples, queries)],
                                        self.max_new_tokens)
        return [Prediction(t, p) for t, p in zip(texts, prompts)]


@INFERENCERS.register("ppl")
class PPLInference(Inferencer):
    """Option scoring: the log-likelihood of each option label given the prompt; per-option probabilities."""

    name = "ppl"
    needs_options = True

    def __init__(self, max_rows: int = 64, length_norm: bool = False, shared_prefix: bool = True) -> None:
        self.max_rows, self.length_norm, self.shared_prefix = max_rows, length_norm, shared_prefix

    def __call__(self, model: Any, samples: Sequence[EvalSample], queries: Sequence[Query], renderer: Any,
                 replies: Sequence[Sequence[str]] | None = None) -> list[Prediction]:
        items = []
        for i, (s, q) in enumerate(zip(samples, queries)):
            if not s.options:
                raise ValueError(f"inferencer ppl needs a closed option set; sample {s.id!r} (task {s.task!r}) has "
                                 "none (use inferencer direct for open-ended tasks)")
            items.append((s.id, q, list(replies[i]) if replies else [], None, q.labels or s.options))
        scores, prompts = option_loglik(model, renderer, items, self.max_rows, self.length_norm, self.shared_prefix)
        preds = []
        for (_, q, rep, _, cands), sc, p in zip(items, scores, prompts):
            best = max(range(len(sc)), key=lambda j: (sc[j], -j))
            preds.append(Prediction(cands[best], p, probs=softmax(sc), turns=list(rep)))
        return preds


@INFERENCERS.register("multi_turn")
class MultiTurnInferencer(Inferencer):
    """Answers the query's user turns in order, each turn batched over the samples; the model's reply to
    a turn is in the history of the next. The last turn is answered by generation, or by option
    scoring with `answer_by: ppl`."""

    name = "multi_turn"

    def __init__(self, max_new_tokens: int = 16, turn_tokens: int = 32, answer_by: str = "direct",
                 max_rows: int = 64) -> None:
        if answer_by not in ("direct", "ppl"):
            raise ValueError(f"inferencer {self.name}: answer_by must be direct or ppl, found {answer_by!r}")
        self.max_new_tokens, self.turn_tokens, self.answer_by, self.max_rows = max_new_tokens, turn_tokens, answer_by, max_rows
        self.needs_options = answer_by == "ppl"

    def expand(self, query: Query) -> Query:
        return query

    @torch.no_grad()
    def __call__(self, model: Any, samples: Sequence[EvalSample], queries: Sequence[Query], renderer: Any) -> list[Prediction]:
        queries = [self.expand(q) for q in queries]
        replies: list[list[str]] = [[] for _ in samples]
        depth = max(len(q.turns) for q in queries)
        for t in range(depth - 1):  # every turn but the last, for the samples that have it
            idx = [i for i, q in enumerate(queries) if t < len(q.turns) - 1]
            texts, _ = generate_texts(model, renderer, [(samples[i].id, queries[i], replies[i], t) for i in idx],
                                      self.turn_tokens)
            for i, text in zip(idx, texts):
                replies[i].append(text)
        if self.answer_by == "ppl":
            return PPLInference(self.max_rows)(model, samples, queries, renderer, replies)
        texts, prompts = generate_texts(model, renderer, [(s.id, q, r, None) for s, q, r in zip(samples, queries, replies)],
                                        self.max_new_tokens)
        return [Prediction(t, p, turns=r) for t, p, r in zip(texts, prompts, replies)]


@INFERENCERS.register("cot")
class ChainOfThoughtInferencer(MultiTurnInferencer):
    """Chain of thought: a reasoning pass, then the answer (generated, or scored with `answer_by: ppl`).

    With a one-turn query (any instruction but `cot`) the reasoning request and the answer request are
    added here, so CoT works with every instruction.
    """

    name = "cot"

    def __init__(self, max_new_tokens: int = 16, turn_tokens: int = 48, answer_by: str = "direct",
                 max_rows: int = 64, reason: str = " Let's think step by step.",
                 answer: str = "So, what is the final answer?") -> None:
        super().__init__(max_new_tokens, turn_tokens, answer_by, max_rows)
        self.reason, self.answer = reason, answer

    def expand(self, query: Query) -> Query:
        if len(query.turns) > 1:
            return query
        return Query([query.turns[0] + self.reason, self.answer], query.media, query.examples, query.labels,
                     query.extra)
