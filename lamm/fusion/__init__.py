"""Fusion: how projected media reach the LLM (prefix tokens or gated cross-attention)."""
from lamm.fusion import gated_xattn, prefix  # noqa: F401  (registers the fusions)
from lamm.fusion.base import Fusion, MediaCountError, MediaTokens

__all__ = ["Fusion", "MediaCountError", "MediaTokens"]
