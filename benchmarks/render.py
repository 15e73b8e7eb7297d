"""Query -> data-pipeline Sample -> token ids and media tensors -> one padded Batch.

Rendering goes through the training data pipeline (template, placeholder blocks, media transforms,
collator), so a model is evaluated on exactly the prompt layout it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lamm.batch import IGNORE_INDEX, Batch, Continuation
from lamm.benchmarks.base import Query
from lamm.datasets.collate import build_collator
from lamm.datasets.processor import ProcessedSample, Processor
from lamm.datasets.sample import MARKER_RE, Sample, Turn
from lamm.datasets.templates import Template, get_template
from lamm.tokens import END_OF_CHUNK, PLACEHOLDERS


def _with_markers(text: str, media: Sequence[Any]) -> str:
    """The text with one marker per medium in front, unless the text already marks them."""
    if not media or MARKER_RE.search(text):
        return text
    return "".join(PLACEHOLDERS[m.modality] for m in media) + "\n" + text


@dataclass
class Rendered:
    """One tokenised conversation: ids (and labels on the final answer when scoring) and media."""

    processed: ProcessedSample
    prompt: str


class Renderer:
    """Builds generation and scoring batches for a model with its own media transforms and template."""

    def __init__(self, model: Any, template: str | Template = "auto", system_prompt: str | None = "none",
                 max_length: int | None = None) -> None:
        """`template`: a registered name, "auto", or a Template instance (an instruction's own prompt format)."""
        tok = model.tokenizer
        if template == "auto":
            template = "chat" if getattr(tok, "chat_template", None) else "vicuna_lamm"
        self.model = model
        self.tokenizer = tok
        self.context = getattr(model, "context_length", None)
        self.template = template if isinstance(template, Template) else get_template(template, system_prompt=system_prompt)
        specs = model.media_specs()
        layout = model.fusion.layout
        self.gen = Processor(tok, self.template, specs, layout, max_length=max_length, training=False)
        self.train = Processor(tok, self.template, specs, layout, max_length=max_length, training=True)
        self.left = build_collator(tok, "left")
        self.eos_ids = self.stop_ids(tok, self.template.renders_chunk_end, self.template.stop_strings)

    @staticmethod
    def stop_ids(tok: Any, chunk_end: bool = False, stop_strings: Sequence[str] = ()) -> list[int]:
        ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
        if chunk_end:  # few-shot templates end each answer with <|endofchunk|> (OpenFlamingo stops there)
            ids.append(tok.convert_tokens_to_ids(END_OF_CHUNK))
        vocab = tok.get_vocab()
        # A template's end text (LAMM's `###`) where the vocabulary has it as one token; reply() cuts the rest.
        ids += [vocab[s] for s in stop_strings if s in vocab and vocab[s] not in ids]
        for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            i = tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    def conversation(self, sample_id: str, query: Query, replies: Sequence[str] = (),
                     upto: int | None = None, answer: str | None = None) -> Sample:
        """The conversation up to user turn `upto` (default: the last), with earlier replies and an optional answer."""
        turns: list[Turn] = []
        media = []
        for ex in query.examples:
            turns.append(Turn("user", _with_markers(ex.question, ex.media)))
            turns.append(Turn("assistant", ex.answer))
            media.extend(ex.media)
        last = len(query.turns) - 1 if upto is None else upto
        for i in range(last + 1):
            text = _with_markers(query.turns[i], query.media) if i == 0 else query.turns[i]
            turns.append(Turn("user", text))
            if i < last:
                turns.append(Turn("assistant", replies[i] if i < len(replies) else ""))
        media.extend(query.media)
        if answer is not None:
            turns.append(Turn("assistant", answer))
        return Sample(id=sample_id, turns=turns, media=list(media))

    def prompt_text(self, sample: Sample) -> str:
        """The rendered prompt (placeholders shown once per medium), for samples.jsonl."""
        return "".join(s.text for s in self.template.render(sample, self.tokenizer))

    def _processed(self, sample: Sample, processor: Processor) -> tuple[list[int], list[int], Any]:
        tok = processor.tokenize(sample)
        limit = self.context
        if limit is not None and processor.max_length is None and len(tok.input_ids) > limit:
            # Past its context a model's answers are noise, not a score: say so (many-shot prompts get here).
            raise ValueError(f"sample {sample.id!r}: the prompt is {len(tok.input_ids)} tokens, more than the model's "
                             f"context of {limit} (fewer in-context examples or shots, or max_length=N to cut prompts)")
        return tok.input_ids, tok.labels, tok.media

    def generation_batch(self, items: Sequence[tuple[str, Query, Sequence[str], int | None]]) -> tuple[Batch, list[str]]:
        """Left-padded prompts ending with the assistant prompt; items are (id, query, replies, upto)."""
        processed, prompts = [], []
        for sid, query, replies, upto in items:
            conv = self.conversation(sid, query, replies, upto)
            ids, _, refs = self._processed(conv, self.gen)
            processed.append(ProcessedSample(sid, torch.tensor(ids), torch.full((len(ids),), IGNORE_INDEX),
                                             self.gen.load_media(conv, refs)))
            prompts.append(self.prompt_text(conv))
        return self.left(processed), prompts

    def scoring_batch(self, items: Sequence[tuple[str, Query, Sequence[str], int | None, Sequence[str]]]
                      ) -> tuple[Batch, list[str], list[int]]:
        """One row per (sample, candidate): labels only on the candidate (and its end-of-turn token).

        Media are loaded once per sample and shared by its candidates. Returns the batch, the prompts
        and how many candidate rows each sample has.
        """
        rows, prompts, counts = [], [], []
        for sid, query, replies, upto, candidates in items:
            conv = self.conversation(sid, query, replies, upto)
            prompt_ids, _, refs = self._processed(conv, self.gen)
            media = self.gen.load_media(conv, refs)
            prompts.append(self.prompt_text(conv))
            for cand in candidates:
                full = self.conversation(sid, query, replies, upto, answer=cand)
                ids, labels, _ = self._processed(full, self.train)
                n = len(prompt_ids)
                if ids[:n] != prompt_ids:  # templates here are prefix-stable; keep a loud check anyway
                    raise RuntimeError(f"sample {sid!r}: the prompt is not a prefix of prompt+answer under template "
                                       f"{self.template.name!r}; option scoring needs a prefix-stable template")
                labels = [IGNORE_INDEX] * n + labels[n:]
                rows.append(ProcessedSample(sid, torch.tensor(ids), torch.tensor(labels), media))
            counts.append(len(candidates))
        right = build_collator(self.tokenizer, "right")
        return right(rows), prompts, counts

    def prompt_and_candidates(self, items: Sequence[tuple[str, Query, Sequence[str], int | None, Sequence[str]]]
                              ) -> tuple[Batch, list[str], list[list[Continuation]]]:
        """Left-padded prompts (media loaded once) plus, per sample, each candidate as a continuation of
        its prompt: the ids after it and which of them are scored (the answer and its end-of-turn token,
        not template glue after it). This is what `MultimodalLM.loglikelihood` takes."""
        processed, prompts, cands = [], [], []
        for sid, query, replies, upto, candidates in items:
            conv = self.conversation(sid, query, replies, upto)
            prompt_ids, _, refs = self._processed(conv, self.gen)
            processed.append(ProcessedSample(sid, torch.tensor(prompt_ids), torch.full((len(prompt_ids),), IGNORE_INDEX),
                                             self.gen.load_media(conv, refs)))
            prompts.append(self.prompt_text(conv))
            n = len(prompt_ids)
            per = []
            for cand in candidates:
                ids, labels, _ = self._processed(self.conversation(sid, query, replies, upto, answer=cand), self.train)
                if ids[:n] != prompt_ids:
                    raise RuntimeError(f"sample {sid!r}: the prompt is not a prefix of prompt+answer under template "
                                       f"{self.template.name!r}; option scoring needs a prefix-stable template")
                per.append(Continuation(ids[n:], [label != IGNORE_INDEX for label in labels[n:]]))
            cands.append(per)
        return self.left(processed), prompts, cands
