"""Special tokens the framework adds to every LLM tokenizer.

Prefix fusion: each medium becomes `num_tokens` copies of its modality's placeholder.
Gated cross-attention: each medium becomes one placeholder followed later by END_OF_CHUNK.
"""
from __future__ import annotations

PLACEHOLDERS: dict[str, str] = {
    "image": "<image>",
    "video": "<video>",
    "pointcloud": "<pointcloud>",
}
END_OF_CHUNK = "<|endofchunk|>"

MEDIA_TOKENS: tuple[str, ...] = (*PLACEHOLDERS.values(), END_OF_CHUNK)


def add_media_tokens(tokenizer) -> dict[str, int]:
    """Add the media tokens to a Hugging Face tokenizer (idempotent); returns token -> id."""
    missing = [t for t in MEDIA_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in MEDIA_TOKENS}
