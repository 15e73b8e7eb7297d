"""Instruction-data formats, processors, collate and the built-in offline data generators.

The built-in formats (lamm, llava, mmgpt, interleaved, webdataset, mixture) register in
`lamm.registry.DATASETS` on first lookup. The training code calls
`build_dataset(cfg, media_specs, tokenizer, layout)` (layout: the model's `fusion.layout`) and
`build_collator(tokenizer, pad_side)`.
Attributes load lazily so that light users (`lamm synth --help`) do not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_collator": "lamm.datasets.build",
    "build_dataset": "lamm.datasets.build",
    "DataError": "lamm.datasets.errors",
    "SkipCounter": "lamm.datasets.errors",
    "ProcessedSample": "lamm.datasets.processor",
    "Processor": "lamm.datasets.processor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lamm.datasets' has no attribute {name!r}")
