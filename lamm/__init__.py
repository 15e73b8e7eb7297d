"""lamm: a research framework for multimodal LLMs built from swappable parts."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Batch", "MediaBatch", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `lamm --help` does not pay for importing torch.
    if name in ("Batch", "MediaBatch"):
        from lamm import batch

        return getattr(batch, name)
    raise AttributeError(f"module 'lamm' has no attribute {name!r}")
