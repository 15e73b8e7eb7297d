"""The fusion contract: how projected media tokens enter the LLM."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lamm.tokens import PLACEHOLDERS, TextLayout


@dataclass
class MediaTokens:
    """Projected tokens of one modality: `tokens[m]` is [K, D] for medium m, owned by `sample_index[m]`."""

    tokens: torch.Tensor
    sample_index: torch.Tensor


class MediaCountError(ValueError):
    """The text's placeholders do not match the media given with it."""


class Fusion(nn.Module, ABC):
    """How projected media reach the LLM: everything fusion-specific lives behind this contract.

    A fusion says how one medium is written into the text (`layout`, plain data the data
    pipeline follows), how media enter the forward pass (`embed` rewrites input embeddings;
    `begin` + `layer_kwargs` condition the decoder layers), whether option scoring may continue
    candidates from a shared prompt KV cache (`shares_prompt_cache`), and what to check after
    each decoder call (`check_call`). Nothing outside `lamm.fusion` branches on a fusion's name.
    """

    # One medium = the projector's K placeholders, no chunk marks (override per fusion).
    layout: TextLayout = TextLayout()
    # True when tokens after a cached prompt need no conditioning beyond that cache, so scoring
    # runs each prompt once and continues every candidate from its repeated cache.
    shares_prompt_cache: bool = True
    # True when `begin` takes `segments` ([B, T] packed-sample index of each token) and keeps each packed
    # sample's media to that sample (data.packing).
    supports_packing: bool = False

    def attach(self, llm: Any) -> None:
        """Hook into the LLM once, after it is loaded and before LoRA is applied."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, embeds: torch.Tensor, media: dict[str, MediaTokens]) -> torch.Tensor:
        """Input embeddings with media applied (identity for cross-attention fusion)."""

    def begin(self, input_ids: torch.Tensor, media: dict[str, MediaTokens], segments: torch.Tensor | None = None) -> Any:
        """Per-call conditioning state (None when the fusion needs none); `segments`: see `supports_packing`."""
        return None

    def layer_kwargs(self, state: Any, input_ids: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments passed explicitly to the decoder layers for the tokens `input_ids`."""
        return {}

    def check_call(self, state: Any, layer_kwargs: dict[str, Any]) -> None:
        """Called after every decoder call with the state and the kwargs it was given; raise if it went wrong."""

    def wrap_modules(self) -> list[nn.Module]:
        """The repeated blocks a sharded strategy wraps (and activation checkpointing recomputes) one by
        one, e.g. gated cross-attention blocks; [] for a fusion without its own blocks."""
        return []

    def zero_gated_parameters(self) -> tuple[list[str], bool]:
        """Trainable parameters (names within the fusion) whose gradient is exactly zero because a frozen
        gate scaling their output is 0, and whether that cuts the media off the text entirely (then the
        encoders and projectors get no gradient either). Fusions without gates: ([], False)."""
        return [], False


def placeholder_masks(input_ids: torch.Tensor, media_token_ids: dict[str, int], modalities) -> dict[str, torch.Tensor]:
    """Boolean [B, T] masks of each modality's placeholder token."""
    return {m: input_ids == media_token_ids[PLACEHOLDERS[m]] for m in modalities}


def check_media_counts(
    masks: dict[str, torch.Tensor], media: dict[str, MediaTokens], per_medium: dict[str, int]
) -> None:
    """Every sample must have exactly as many placeholders as its media need, per modality."""
    for modality, mask in masks.items():
        found = mask.sum(1)
        expected = torch.zeros_like(found)
        if modality in media:
            idx = media[modality].sample_index.to(found.device)
            expected.index_add_(0, idx, torch.full_like(idx, per_medium[modality]))
        bad = (found != expected).nonzero().flatten().tolist()
        if bad:
            b = bad[0]
            n = int(expected[b]) // max(per_medium.get(modality, 1), 1)
            raise MediaCountError(
                f"sample {b}: {n} {modality} media need {int(expected[b])} {PLACEHOLDERS[modality]} "
                f"placeholder tokens ({per_medium.get(modality, 1)} each) but the text has {int(found[b])}"
            )
    for modality in media:
        if modality not in masks:
            raise MediaCountError(f"got {modality} media but the model has no {modality} encoder")
