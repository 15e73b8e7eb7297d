"""lamm: a research framework for multimodal LLMs built from swappable parts."""
from lamm.batch import Batch, MediaBatch

__version__ = "0.1.0"
__all__ = ["Batch", "MediaBatch", "__version__"]
