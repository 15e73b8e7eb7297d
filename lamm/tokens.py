"""Special tokens the framework adds to every LLM tokenizer, and how a fusion writes media with them.

Each fusion hands out a `TextLayout` (plain data): the data pipeline follows it to write media into
the text without knowing which fusion it serves.
"""
from __future__ import annotations

from dataclasses import dataclass

PLACEHOLDERS: dict[str, str] = {
    "image": "<image>",
    "video": "<video>",
    "pointcloud": "<pointcloud>",
}
END_OF_CHUNK = "<|endofchunk|>"

MEDIA_TOKENS: tuple[str, ...] = (*PLACEHOLDERS.values(), END_OF_CHUNK)


@dataclass(frozen=True)
class TextLayout:
    """How one medium is written into the text, as a fusion decides.

    `placeholders`: placeholder tokens per medium; None: one per projected media token (the
    projector's count, as prefix fusion replaces them one for one).
    `chunk_end`: a token that closes the text chunk following each medium (OpenFlamingo's
    <|endofchunk|>), written before the next medium; None: chunks are not marked.
    `close_last_chunk`: whether a training sequence also ends with `chunk_end` (prompts never do:
    the model is still writing that chunk).
    `around`: a token of the LLM's own vocabulary written before and after each medium's placeholders,
    media next to each other sharing the one between them (IDEFICS's <fake_token_around_image>); None: none.
    """

    placeholders: int | None = None
    chunk_end: str | None = None
    close_last_chunk: bool = True
    around: str | None = None

    def __post_init__(self) -> None:
        if self.placeholders is not None and self.placeholders < 1:
            raise ValueError(f"TextLayout.placeholders must be >= 1 or None, got {self.placeholders}")
        if self.chunk_end is not None and self.chunk_end not in MEDIA_TOKENS:
            raise ValueError(f"TextLayout.chunk_end must be one of lamm's media tokens {MEDIA_TOKENS}, got {self.chunk_end!r}")

    def placeholders_per_medium(self, projected_tokens: int) -> int:
        """How many placeholder tokens one medium projected to `projected_tokens` tokens occupies."""
        return projected_tokens if self.placeholders is None else self.placeholders

    def medium_text(self, modality: str, projected_tokens: int) -> str:
        """One medium in a hand-written prompt: its placeholder block (between two `around` tokens if set),
        closed by `chunk_end` if chunks are marked."""
        around = self.around or ""
        return around + PLACEHOLDERS[modality] * self.placeholders_per_medium(projected_tokens) + around + (
            self.chunk_end or "")


def add_media_tokens(tokenizer) -> dict[str, int]:
    """Add the media tokens to a Hugging Face tokenizer (idempotent); returns token -> id."""
    missing = [t for t in MEDIA_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in MEDIA_TOKENS}
