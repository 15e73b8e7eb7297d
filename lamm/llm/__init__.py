"""LLM backbones: loading (hub id, folder, GGUF, built-ins), media tokens, LoRA."""
from lamm.llm import loaders  # noqa: F401  (registers the LLM sources)
from lamm.llm.language_model import LanguageModel, find_decoder_layers

__all__ = ["LanguageModel", "find_decoder_layers"]
