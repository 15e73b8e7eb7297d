"""Instruction-data formats, processors, collate and the built-in offline data generators.

Importing this package registers every built-in format in `lamm.registry.DATASETS`
(lamm, llava, mmgpt, interleaved, webdataset, mixture). The training code calls
`build_dataset(cfg, media_specs, tokenizer, fusion)` and `build_collator(tokenizer, pad_side)`.
"""
from lamm.datasets.build import build_collator, build_dataset
from lamm.datasets.errors import DataError, SkipCounter
from lamm.datasets.processor import ProcessedSample, Processor
from lamm.datasets import formats, mixture  # noqa: F401,E402  (registration)

__all__ = ["DataError", "ProcessedSample", "Processor", "SkipCounter", "build_collator", "build_dataset"]
