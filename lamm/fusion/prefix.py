"""Prefix fusion (LLaVA / LAMM): projected media tokens replace their placeholders in the input."""
from __future__ import annotations

from typing import Any

import torch

from lamm.fusion.base import Fusion, MediaTokens, check_media_counts, placeholder_masks
from lamm.registry import FUSIONS
from lamm.tokens import PLACEHOLDERS, TextLayout


@FUSIONS.register("prefix")
class PrefixFusion(Fusion):
    """Scatter each medium's K tokens into its K placeholder positions, anywhere in the text."""

    layout = TextLayout()  # K placeholders per medium, no chunk marks
    shares_prompt_cache = True  # media live in the prompt's cache only
    supports_packing = True  # media replace their own placeholders: a packed sample sees only its own

    def __init__(self, hidden_size: int | None = None, **_: Any) -> None:
        super().__init__()
        self.media_token_ids: dict[str, int] = {}

    def attach(self, llm: Any) -> None:
        self.media_token_ids = dict(llm.media_token_ids)

    def embed(self, input_ids: torch.Tensor, embeds: torch.Tensor, media: dict[str, MediaTokens]) -> torch.Tensor:
        masks = placeholder_masks(input_ids, self.media_token_ids, PLACEHOLDERS)
        check_media_counts(masks, media, {m: int(t.tokens.shape[1]) for m, t in media.items()})
        out = embeds
        for modality, item in media.items():
            if len(item.tokens) == 0:
                continue
            # Placeholders are read in row-major order, so media must be ordered by owning sample.
            order = torch.argsort(item.sample_index, stable=True)
            tokens = item.tokens[order].reshape(-1, embeds.shape[-1]).to(embeds.dtype)
            out = out.masked_scatter(masks[modality].unsqueeze(-1), tokens)
        return out
