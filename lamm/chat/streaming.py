"""Print a reply while it is generated: incremental decoding that never prints unstable text.

A token may hold part of a multi-byte character (byte-level BPE) or change how the previous text
decodes (SentencePiece's leading spaces), so text is written only once it cannot change.
Fast tokenizers use `tokenizers.decoders.DecodeStream`, the library's own incremental decoder;
others fall back to "decode everything, write the new suffix unless it ends mid-character".
"""
from __future__ import annotations

from typing import Any, Iterable, TextIO

import torch

REPLACEMENT = "\ufffd"  # what decoding yields for an incomplete UTF-8 sequence


class ReplyStreamer:
    """A streamer for `MultimodalLM.generate(streamer=...)` (Hugging Face's put/end protocol) for one row.

    Writes stable text to `out` as tokens arrive; stops writing at the first stop token. After
    `end()`, `text` is the whole reply, exactly what `tokenizer.decode(ids, skip_special_tokens=True)`
    gives, and everything written adds up to it without its leading whitespace (models often start
    a reply with a space after "Assistant:").
    """

    def __init__(self, tokenizer: Any, out: TextIO | None, stop_ids: Iterable[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.out = out
        self.stop_ids = set(stop_ids)
        self.ids: list[int] = []
        self.decoded = ""  # the stable text so far, including leading whitespace
        self.written = ""
        self.text = ""
        self.stopped = False
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._stream = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=True)

    def _write(self, piece: str) -> None:
        self.decoded += piece
        shown = piece if self.written else piece.lstrip()
        if shown and self.out is not None:
            self.out.write(shown)
            self.out.flush()
        self.written += shown

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def put(self, tokens: torch.Tensor) -> None:
        """Take the next token (a [1] or [1, 1] tensor) and write whatever text became stable."""
        values = tokens.reshape(-1).tolist()
        if len(values) != 1:
            raise ValueError(f"ReplyStreamer streams one sequence; got {len(values)} tokens per step")
        token = int(values[0])
        if self.stopped or token in self.stop_ids:
            self.stopped = True
            return
        self.ids.append(token)
        if self._stream is not None:
            piece = self._stream.step(self._backend, token)
            self._write(piece or "")
            return
        text = self._decode()
        if not text.endswith(REPLACEMENT) and text.startswith(self.decoded):
            self._write(text[len(self.decoded):])

    def end(self) -> None:
        """Write what is still held back (e.g. an unfinished character) and fix `text`."""
        self.text = self._decode()
        if self.text.startswith(self.decoded):
            self._write(self.text[len(self.decoded):])
