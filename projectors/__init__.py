"""Projectors: media tokens from an encoder's width to the LLM's width.

Importing this package registers every built-in projector in `lamm.registry.PROJECTORS`.
"""
from lamm.projectors import linear, mlp, perceiver, qformer  # noqa: F401  (import registers)
from lamm.projectors.base import Projector
from lamm.projectors.linear import LinearProjector
from lamm.projectors.mlp import MLPProjector
from lamm.projectors.perceiver import PerceiverResampler
from lamm.projectors.qformer import QFormerProjector

__all__ = ["Projector", "LinearProjector", "MLPProjector", "PerceiverResampler", "QFormerProjector"]
