"""A multi-turn conversation with a MultimodalLM: history, attached media, prompt rendering, replies.

Prompts go through the training data pipeline (`lamm.benchmarks.render.Renderer` -> the datasets
`Processor` with the run's template and system prompt), so a chat prompt is laid out token for token
as the model saw its training data. The whole history is re-rendered every turn, earlier media as
their placeholders; each medium is loaded and transformed once, when attached, and re-encoded with
the prompt at every turn.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from lamm.batch import IGNORE_INDEX, Batch
from lamm.datasets.errors import DataError
from lamm.datasets.processor import ProcessedSample
from lamm.datasets.sample import MARKER_RE, MediaRef, Sample, Turn
from lamm.tokens import PLACEHOLDERS


MAX_MEDIA = 32  # per conversation (lamm-chat and each lamm-serve demo session)


class ChatError(ValueError):
    """Something the user can fix (a bad media path, an unsupported modality); one line, the chat goes on."""


@dataclass
class Reply:
    """One answer and what went into it."""

    text: str
    prompt_tokens: int
    new_tokens: int
    media: dict[str, int]  # media tensors in the prompt, per modality
    placeholders: dict[str, int]  # placeholder tokens in the prompt, per modality
    seconds: float
    interrupted: bool = False


@dataclass
class GenerationOptions:
    """How replies are decoded; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


class ChatSession:
    """History of turns and media for one model, rendered with one template."""

    def __init__(self, model: Any, template: str = "auto", system_prompt: str | None = "none",
                 device: str | torch.device = "cpu") -> None:
        from lamm.benchmarks.render import Renderer

        self.model = model
        self.device = torch.device(device)
        # No truncation: cutting the end of a chat prompt would drop the question itself.
        self.renderer = Renderer(model, template=template, system_prompt=system_prompt, max_length=None)
        self.specs = model.media_specs()
        self.context: int | None = model.context_length
        self.turns: list[Turn] = []
        self.media: list[MediaRef] = []  # in text order, for the turns in `turns`
        self.pending: list[MediaRef] = []  # attached for the next user turn
        self._tensors: dict[MediaRef, torch.Tensor] = {}
        self._attached = 0  # makes every MediaRef distinct, even for the same file twice
        self._generator: torch.Generator | None = None
        self.renderer.gen.tokenize(self.conversation("hello"))  # a template that cannot render fails now, once

    @property
    def template(self) -> str:
        return self.renderer.template.name

    def attach(self, modality: str, path: str, data: bytes | None = None) -> MediaRef:
        """Load and transform a medium now (so a bad file fails here) for the next user turn.

        With `data`, the medium is those bytes (an upload) and `path` only names it in messages.
        """
        if modality not in PLACEHOLDERS:
            raise ChatError(f"unknown modality {modality!r}; expected one of {', '.join(PLACEHOLDERS)}")
        if modality not in self.specs:
            raise ChatError(f"this model has no {modality} encoder (it reads: {', '.join(sorted(self.specs)) or 'text only'})")
        if not path:
            raise ChatError(f"no path given for the {modality}")
        if len(self.media) + len(self.pending) >= MAX_MEDIA:  # every medium stays in memory with the history
            raise ChatError(f"this conversation already holds {MAX_MEDIA} media; /reset to start over")
        self._attached += 1
        ref = MediaRef(modality, path if data is not None else os.path.expanduser(path), f"attachment {self._attached}",
                       data)
        holder = Sample(id="chat", turns=[], media=[ref], source="<chat>")
        try:
            tensor = self.renderer.gen.load_media(holder, [ref])[modality][0]
        except DataError as err:
            raise ChatError(err.message) from None
        self._tensors[ref] = tensor
        self.pending.append(ref)
        return ref

    def reset(self) -> None:
        """Forget the history and every attached medium."""
        self.turns, self.media, self.pending = [], [], []
        self._tensors.clear()

    def conversation(self, text: str) -> Sample:
        """The history plus a new user turn, with the pending media marked in front of its text."""
        if MARKER_RE.search(text):
            raise ChatError(f"the message contains a media placeholder ({MARKER_RE.search(text).group()}); "
                            "attach media with /image, /video or /points instead")
        if self.pending:
            text = "".join(PLACEHOLDERS[r.modality] for r in self.pending) + "\n" + text
        return Sample(id="chat", turns=[*self.turns, Turn("user", text)], media=[*self.media, *self.pending],
                      source="<chat>")

    def processed(self, sample: Sample) -> ProcessedSample:
        """Token ids and media tensors of a conversation, exactly as the data processor renders it."""
        tokens = self.renderer.gen.tokenize(sample)
        media: dict[str, list[torch.Tensor]] = {}
        for ref in tokens.media:
            media.setdefault(ref.modality, []).append(self._tensors[ref])
        ids = torch.tensor(tokens.input_ids, dtype=torch.long)
        return ProcessedSample("chat", ids, torch.full_like(ids, IGNORE_INDEX), media)

    def batch(self, sample: Sample) -> Batch:
        """The conversation as a one-row batch on the session's device."""
        return self.renderer.left([self.processed(sample)]).to(self.device)

    def new_token_budget(self, prompt_tokens: int, wanted: int) -> int:
        """How many tokens a reply may have after a prompt this long; ChatError if the prompt fills the context."""
        if self.context is not None and prompt_tokens >= self.context:
            raise ChatError(f"the conversation is {prompt_tokens} tokens, the model's context is {self.context}; "
                            "/reset to start over")
        return wanted if self.context is None else min(wanted, self.context - prompt_tokens)

    def record(self, sample: Sample, answer: str) -> None:
        """`sample`'s user turn was answered with `answer`: both join the history, its media with them."""
        self.turns = [*sample.turns, Turn("assistant", answer)]
        self.media, self.pending = list(sample.media), []

    def prompt_text(self, text: str) -> str:
        """The rendered prompt for the history plus `text` (placeholders shown once per medium)."""
        return self.renderer.prompt_text(self.conversation(text))

    def reply(self, text: str, options: GenerationOptions | None = None, out: TextIO | None = None) -> Reply:
        """Answer a user message, streaming the reply to `out`; the turn joins the history.

        Ctrl-C while generating stops the reply; what was generated so far is kept as the answer.
        """
        from lamm.chat.streaming import ReplyStreamer

        options = options or GenerationOptions()
        sample = self.conversation(text)
        batch = self.batch(sample)
        length = int(batch.attention_mask.sum())
        max_new = self.new_token_budget(length, options.max_new_tokens)
        streamer = ReplyStreamer(self.model.tokenizer, out, self.renderer.eos_ids)
        if options.temperature > 0 and options.seed is not None and self._generator is None:
            # One generator per session: replies differ turn to turn, the whole chat replays exactly.
            self._generator = torch.Generator(self.device).manual_seed(options.seed)
        start = time.perf_counter()
        interrupted = False
        try:
            self.model.generate(batch, max_new_tokens=max_new, do_sample=options.temperature > 0,
                                temperature=options.temperature or 1.0, top_p=options.top_p,
                                eos_token_id=self.renderer.eos_ids, generator=self._generator, streamer=streamer)
        except KeyboardInterrupt:
            interrupted = True
            streamer.end()
        answer = self.renderer.template.reply(streamer.text)  # without an end marker the template trains
        self.record(sample, answer)
        ids = batch.input_ids[0]
        placeholders = {}
        for modality, token in PLACEHOLDERS.items():
            count = int((ids == self.model.tokenizer.convert_tokens_to_ids(token)).sum())
            if count:
                placeholders[modality] = count
        return Reply(answer, length, len(streamer.ids), {m: len(b) for m, b in batch.media.items()},
                     placeholders, time.perf_counter() - start, interrupted)
