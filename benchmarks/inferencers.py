"""Inferencers: how the model answers. Batched direct generation, batched option scoring (PPL),
multi-turn, chain of thought.

Option scoring runs each prompt once and shares its KV cache with all its candidates, scoring every
candidate of every sample of a batch in one pass (up to `max_rows` candidate rows); fusions with
per-token conditioning state (gated_xattn) score full prompt+candidate rows in one forward instead.
It scores only the candidate's tokens (and the end-of-turn token, so "1" and "12"
are told apart), and turns the summed log-likelihoods into per-option probabilities by softmax
(`length_norm: true` uses the mean log-likelihood per token instead, ChEF's option).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from lamm.benchmarks.base import EvalSample, Inferencer, Prediction, Query
from lamm.registry import INFERENCERS

IGNORE_INDEX = -100


def _decode(tok: Any, rows: torch.Tensor) -> list[str]:
    return [t.strip() for t in tok.batch_decode(rows, skip_special_tokens=True)]


def generate_texts(model: Any, renderer: Any, items: Sequence[tuple], max_new_tokens: int) -> tuple[list[str], list[str]]:
    """Greedy replies for (id, query, replies, upto) items, in one batched generate call."""
    batch, prompts = renderer.generation_batch(items)
    device = next(model.parameters()).device
    out = model.generate(batch.to(device), max_new_tokens=max_new_tokens, eos_token_id=renderer.eos_ids)
    return _decode(model.tokenizer, out.cpu()), prompts


@torch.no_grad()
def _shared_prefix_loglik(model: Any, renderer: Any, chunk: Sequence[tuple], length_norm: bool
                          ) -> tuple[list[list[float]], list[str]] | None:
    """Prompts run once (KV cache), then every candidate of every sample in one pass over the repeated cache.

    Returns None when the fusion keeps per-token conditioning state (gated_xattn): then the caller
    scores full prompt+candidate rows instead.
    """
    from lamm.model import _positions

    device = next(model.parameters()).device
    batch, prompts, cands = renderer.prompt_and_candidates(chunk)
    batch = batch.to(device)
    ids, mask = batch.input_ids, batch.attention_mask
    media = model.encode_media(batch.media)
    state = model.fusion.begin(ids, media)
    if state is not None:
        return None
    embeds = model.fusion.embed(ids, model.llm.embed(ids), media)
    positions = _positions(mask)
    hidden, past = model._decode(embeds, mask, positions, None, ids, use_cache=True)
    owner = torch.tensor([i for i, per in enumerate(cands) for _ in per], device=device)
    flat = [c for per in cands for c in per]
    width = max(len(c[0]) for c in flat)
    pad = renderer.tokenizer.pad_token_id or 0
    cand_ids = torch.full((len(flat), width), pad, dtype=torch.long, device=device)
    cand_mask = torch.zeros((len(flat), width), dtype=torch.long, device=device)
    scored = torch.zeros((len(flat), width), dtype=torch.bool, device=device)
    for r, (toks, use) in enumerate(flat):
        cand_ids[r, : len(toks)] = torch.tensor(toks, device=device)
        cand_mask[r, : len(toks)] = 1
        scored[r, : len(toks)] = torch.tensor(use, device=device)
    past.reorder_cache(owner)  # repeat each sample's cache once per candidate
    full_mask = torch.cat([mask[owner], cand_mask], 1)
    cand_pos = positions.max(1).values[owner].unsqueeze(1) + 1 + torch.arange(width, device=device)
    h2, _ = model._decode(model.llm.embed(cand_ids), full_mask, cand_pos, None, cand_ids, past, use_cache=True)
    # Token j of a candidate is predicted by the hidden state before it: the prompt's last one for j = 0.
    before = torch.cat([hidden[:, -1][owner].unsqueeze(1), h2[:, :-1]], 1)
    logp = torch.log_softmax(model.llm.logits(before[scored]).float(), -1)
    logp = logp.gather(-1, cand_ids[scored].unsqueeze(-1)).squeeze(-1)
    rows = scored.nonzero()[:, 0]
    total = torch.zeros(len(flat), device=device).index_add_(0, rows, logp)
    if length_norm:
        total = total / scored.sum(1).clamp(min=1)
    values = total.cpu().tolist()
    out, start = [], 0
    for per in cands:
        out.append(values[start:start + len(per)])
        start += len(per)
    return out, prompts


@torch.no_grad()
def option_loglik(model: Any, renderer: Any, items: Sequence[tuple], max_rows: int = 64,
                  length_norm: bool = False, shared_prefix: bool = True) -> tuple[list[list[float]], list[str]]:
    """Per-sample lists of candidate log-likelihoods for (id, query, replies, upto, candidates) items.

    With `shared_prefix` (prefix fusion) each prompt runs once and its KV cache is shared by its
    candidates; otherwise every (prompt + candidate) row runs in full. Both score the same tokens.
    """
    device = next(model.parameters()).device
    scores: list[list[float]] = []
    prompts: list[str] = []
    chunk: list[tuple] = []

    def flush() -> None:
        nonlocal shared_prefix
        if not chunk:
            return
        if shared_prefix:
            fast = _shared_prefix_loglik(model, renderer, chunk, length_norm)
            if fast is not None:
                scores.extend(fast[0])
                prompts.extend(fast[1])
                chunk.clear()
                return
            shared_prefix = False  # this fusion needs full rows; do not try again
        batch, p, counts = renderer.scoring_batch(chunk)
        prompts.extend(p)
        batch = batch.to(device)
        out = model(batch, logits="labels")
        targets = batch.labels[:, 1:]
        where = targets != IGNORE_INDEX
        logp = torch.log_softmax(out.logits.float(), -1).gather(-1, targets[where].unsqueeze(-1)).squeeze(-1)
        rows = where.nonzero()[:, 0]
        total = torch.zeros(len(targets), device=logp.device).index_add_(0, rows, logp)
        if length_norm:
            total = total / where.sum(1).clamp(min=1)
        flat = total.cpu().tolist()
        start = 0
        for n in counts:
            scores.append(flat[start:start + n])
            start += n
        chunk.clear()

    rows_in_chunk = 0
    for item in items:
        n = len(item[4])
        if chunk and rows_in_chunk + n > max_rows:
            flush()
            rows_in_chunk = 0
        chunk.append(item)
        rows_in_chunk += n
    flush()
    return scores, prompts


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
