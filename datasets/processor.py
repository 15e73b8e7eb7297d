"""Sample -> token ids with media placeholder blocks, loss labels and transformed media tensors.

Text is tokenised segment by segment (so label boundaries are exact without offsets); each medium
becomes a block of placeholder ids as the model's fusion lays it out (`lamm.tokens.TextLayout`:
how many placeholders per medium, and whether a chunk-end token closes the text chunk that follows
each medium, before the next medium and at the end of a training sequence, as OpenFlamingo does).

With `training=False` (generation/evaluation) a conversation ending with an assistant turn is
rendered without it, ending with the assistant's generation prompt; the answer is kept as
`ProcessedSample.target`.

Encoder transforms: a `ValueError` (or `DataError`) from a transform means it cannot take this
medium (e.g. a point cloud with too few columns) and becomes a one-line DataError naming file, sample
and field (reason `bad_media`, skippable). Any other exception is treated as a bug in the transform
and propagates with its traceback, plus a note naming the medium and sample.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from lamm.batch import IGNORE_INDEX, MediaSpec
from lamm.datasets.errors import DataError, SampleSkipped
from lamm.datasets.media import load_media
from lamm.datasets.sample import MARKER_RE, MODALITY_OF_MARKER, MediaRef, Sample, with_media_first
from lamm.datasets.templates import Segment, Template
from lamm.tokens import END_OF_CHUNK, PLACEHOLDERS, TextLayout

TRUNCATION_POLICIES = ("right", "skip")


@dataclass
class ProcessedSample:
    """One tokenised sample ready for the collator."""

    id: str
    input_ids: torch.Tensor  # [T] long
    labels: torch.Tensor  # [T] long, IGNORE_INDEX where there is no loss
    media: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # per modality, in text order
    truncated: bool = False
    # training=False: the final assistant turn the prompt stops before (the reference answer), if any.
    target: str | None = None
    # Modalities whose `media` tensors are encoder outputs from a feature cache (not encoder inputs).
    encoded: frozenset[str] = frozenset()


@dataclass
class TokenizedSample:
    """Ids and labels before media are loaded; `media` are the references whose blocks survived truncation."""

    input_ids: list[int]
    labels: list[int]
    media: list[MediaRef]
    truncated: bool = False


@dataclass
class _Piece:
    ids: list[int]
    labels: list[int]
    medium: MediaRef | None = None  # set for a placeholder block, which is never cut


def merge_same_labels(segments: list[Segment]) -> list[Segment]:
    """Adjacent segments with the same `train` flag joined, so text is tokenized across turn boundaries
    as the model's own tokenizer sees the whole prompt (`q ` + `ASSISTANT:` is not `q ASSISTANT:` in BPE)."""
    merged: list[Segment] = []
    for seg in segments:
        if merged and merged[-1].train == seg.train:
            merged[-1] = Segment(merged[-1].text + seg.text, seg.train)
        else:
            merged.append(seg)
    return merged


class Processor:
    """Render, tokenise, mask, truncate and load media for one sample."""

    def __init__(
        self,
        tokenizer,
        template: Template,
        media_specs: dict[str, MediaSpec],
        layout: TextLayout = TextLayout(),
        max_length: int | None = 2048,
        truncation: str = "right",
        training: bool = True,
    ) -> None:
        if not isinstance(layout, TextLayout):
            raise TypeError(f"layout must be a lamm.tokens.TextLayout (the model's fusion.layout), got {layout!r}")
        if truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"unknown truncation policy {truncation!r}; expected one of {', '.join(TRUNCATION_POLICIES)}")
        vocab = tokenizer.get_vocab()
        missing = [t for t in (*PLACEHOLDERS.values(), END_OF_CHUNK) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks media tokens {missing}; call lamm.tokens.add_media_tokens(tokenizer) first")
        if layout.around is not None and layout.around not in vocab:
            raise ValueError(f"the fusion writes {layout.around} around each medium but the tokenizer has no such token")
        self.tokenizer = tokenizer
        self.template = template
        self.media_specs = dict(media_specs)
        self.layout = layout
        self.max_length = max_length
        self.truncation = truncation
        self.training = training
        self.placeholder_ids = {m: tokenizer.convert_tokens_to_ids(t) for m, t in PLACEHOLDERS.items()}
        self.chunk_end_id = tokenizer.convert_tokens_to_ids(layout.chunk_end) if layout.chunk_end else None
        self.around_id = tokenizer.convert_tokens_to_ids(layout.around) if layout.around else None
        self.bos_id = self._bos_id(tokenizer)

    @staticmethod
    def _bos_id(tokenizer) -> int | None:
        # Prepend BOS only when the tokenizer itself would (Llama yes, GPT-2/SmolLM no).
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        if len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id:
            return tokenizer.bos_token_id
        return None

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _check_media(self, sample: Sample, markers: list[str]) -> None:
        for ref in sample.media:
            if ref.modality not in self.media_specs:
                raise DataError(
                    f"sample has {ref.modality} media but the model has no {ref.modality} encoder "
                    f"(configured modalities: {', '.join(sorted(self.media_specs)) or 'none'})",
                    file=sample.source, sample_id=sample.id, field=ref.field, reason="unsupported_modality")
        for modality in PLACEHOLDERS:
            found = sum(MODALITY_OF_MARKER[m] == modality for m in markers)
            expected = len(sample.media_of(modality))
            if found != expected:
                raise DataError(
                    f"text marks {found} {PLACEHOLDERS[modality]} but the sample has {expected} {modality} media",
                    file=sample.source, sample_id=sample.id, field="conversations", reason="marker_mismatch")

    def _pieces(self, sample: Sample) -> list[_Piece]:
        sample = with_media_first(sample)  # parsers already did this; samples built in code may not have
        segments = merge_same_labels(self.template.render(sample, self.tokenizer))
        self._check_media(sample, [m for s in segments for m in MARKER_RE.findall(s.text)])
        next_of = {m: iter(sample.media_of(m)) for m in PLACEHOLDERS}
        pieces: list[_Piece] = []
        if self.bos_id is not None and not self.template.renders_bos:
            pieces.append(_Piece([self.bos_id], [IGNORE_INDEX]))
        seen_media = False
        for seg in segments:
            pos = 0
            for match in (*MARKER_RE.finditer(seg.text), None):
                end = match.start() if match else len(seg.text)
                ids = self._encode(seg.text[pos:end])
                if ids:
                    pieces.append(_Piece(ids, list(ids) if seg.train else [IGNORE_INDEX] * len(ids)))
                if match is None:
                    break
                pos = match.end()
                modality = MODALITY_OF_MARKER[match.group()]
                if self.chunk_end_id is not None and seen_media and not self.template.renders_chunk_end:
                    pieces.append(self._end_of_chunk(sample))
                seen_media = True
                k = self.layout.placeholders_per_medium(self.media_specs[modality].projected_tokens)
                block = [self.placeholder_ids[modality]] * k
                if self.around_id is not None:  # a medium right after another shares the token between them
                    adjacent = bool(pieces) and pieces[-1].medium is not None
                    block = ([] if adjacent else [self.around_id]) + block + [self.around_id]
                pieces.append(_Piece(block, [IGNORE_INDEX] * len(block), next(next_of[modality])))
        if (self.chunk_end_id is not None and seen_media and self.training and self.layout.close_last_chunk
                and not self.template.renders_chunk_end):
            pieces.append(self._end_of_chunk(sample))
        return pieces

    def _end_of_chunk(self, sample: Sample) -> _Piece:
        # Documents learn where chunks end (OpenFlamingo trains it on MMC4); conversations stop on the
        # end-of-turn token instead, so there the chunk end is structure only and carries no loss.
        label = self.chunk_end_id if sample.kind == "document" else IGNORE_INDEX
        return _Piece([self.chunk_end_id], [label])

    def _truncate(self, pieces: list[_Piece]) -> tuple[list[_Piece], bool]:
        total = sum(len(p.ids) for p in pieces)
        if self.max_length is None or total <= self.max_length:
            return pieces, False
        if self.truncation == "skip":
            raise SampleSkipped("too_long", f"{total} tokens > max_length {self.max_length}")
        kept: list[_Piece] = []
        budget = self.max_length
        for p in pieces:
            if len(p.ids) <= budget:
                kept.append(p)
                budget -= len(p.ids)
                continue
            if p.medium is None and budget > 0:  # cut text; a placeholder block is dropped whole
                kept.append(_Piece(p.ids[:budget], p.labels[:budget]))
            break
        return kept, True

    def split_target(self, sample: Sample) -> tuple[Sample, str | None]:
        """For generation (training=False): the sample without its final assistant turn, and that turn's text.

        The prompt then ends with the assistant's generation prompt instead of containing the answer.
        Training samples, documents and conversations ending with a user turn are returned unchanged.
        """
        if self.training or sample.kind != "chat" or not sample.turns or sample.turns[-1].role != "assistant":
            return sample, None
        return dataclasses.replace(sample, turns=list(sample.turns[:-1])), sample.turns[-1].text

    def tokenize(self, sample: Sample) -> TokenizedSample:
        """Ids and labels with placeholder blocks (no media loaded); raises DataError or SampleSkipped.

        With training=False a final assistant turn is left out (see `split_target`).
        """
        sample, _ = self.split_target(sample)
        pieces, truncated = self._truncate(self._pieces(sample))
        ids = [i for p in pieces for i in p.ids]
        labels = [label for p in pieces for label in p.labels]
        if self.training and all(label == IGNORE_INDEX for label in labels):
            if truncated:
                raise SampleSkipped("too_long", f"truncation to {self.max_length} tokens left no response tokens")
            raise DataError("no assistant response to train on", file=sample.source, sample_id=sample.id,
                            field="conversations", reason="no_response")
        return TokenizedSample(ids, labels, [p.medium for p in pieces if p.medium is not None], truncated)

    def load_media(self, sample: Sample, refs: list[MediaRef]) -> dict[str, list[torch.Tensor]]:
        """Load and transform media with each modality's encoder transform."""
        out: dict[str, list[torch.Tensor]] = {}
        for ref in refs:
            cached = self.media_specs[ref.modality].features
            if cached is not None:  # a frozen-feature cache replaces loading, transform and encoder
                out.setdefault(ref.modality, []).append(cached(ref))
                continue
            try:
                raw = load_media(ref)
            except DataError as err:
                raise err.with_context(file=sample.source, sample_id=sample.id, field=ref.field) from None
            try:
                tensor = self.media_specs[ref.modality].transform(raw)
            except DataError as err:
                raise err.with_context(file=sample.source, sample_id=sample.id, field=ref.field) from None
            except ValueError as exc:
                # Encoder transforms raise ValueError for media they cannot take (wrong shape, too few
                # channels, ...): bad data, so one line naming file, sample and field, skippable.
                raise DataError(f"{ref.modality} transform rejected {ref.path} ({' '.join(str(exc).split())})",
                                file=sample.source, sample_id=sample.id, field=ref.field, reason="bad_media") from None
            except Exception as exc:  # TypeError, AttributeError, ...: a transform bug; keep the traceback, add where
                exc.add_note(f"while transforming {ref.modality} {ref.path} of sample {sample.id!r} in {sample.source}")
                raise
            out.setdefault(ref.modality, []).append(torch.as_tensor(tensor))
        return out

    def __call__(self, sample: Sample) -> ProcessedSample:
        """Tokenise and load media (training=False: the prompt stops before the answer, kept as `target`)."""
        tok = self.tokenize(sample)
        return ProcessedSample(
            id=sample.id,
            input_ids=torch.tensor(tok.input_ids, dtype=torch.long),
            labels=torch.tensor(tok.labels, dtype=torch.long),
            media=self.load_media(sample, tok.media),
            truncated=tok.truncated,
            target=self.split_target(sample)[1],
            encoded=frozenset(m for m, spec in self.media_specs.items() if spec.features is not None),
        )
