"""Entry points the training code calls: `build_dataset` and `build_collator`.

A dataset format is a factory registered in `lamm.registry.DATASETS` with the signature
`factory(cfg: DataConfig, ctx: BuildContext) -> Dataset`; every built dataset exposes `skipped`
(a `SkipCounter`) so the trainer can print `dataset.skipped.summary()` at the end of a run.
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from lamm.batch import MediaSpec
from lamm.datasets.base import ErrorPolicy
from lamm.datasets.collate import build_collator
from lamm.datasets.config import BuildContext, DataConfig
from lamm.datasets.errors import SkipCounter
from lamm.datasets.media import MediaLimits, set_media_limits
from lamm.datasets.processor import Processor
from lamm.datasets.templates import format_template, get_template
from lamm.registry import DATASETS
from lamm.tokens import TextLayout

__all__ = ["build_dataset", "build_collator", "build_from_config", "make_processor", "make_policy"]


def make_processor(cfg: DataConfig, ctx: BuildContext, default_template: str | None = None,
                   template: str | None = None) -> Processor:
    """The processor a format uses: its template (config wins over the format default) and limits.

    `default_template` is for formats `format_template` does not know (plug-ins)."""
    name = template or cfg.template or default_template or format_template(cfg.name) or "vicuna_lamm"
    return Processor(
        ctx.tokenizer,
        get_template(name, system_prompt=cfg.system_prompt),
        ctx.media_specs,
        layout=ctx.layout,
        max_length=cfg.max_length,
        truncation=cfg.truncation,
        training=ctx.training,
    )


def make_policy(cfg: DataConfig, ctx: BuildContext) -> ErrorPolicy:
    """The raise-or-skip policy counting into the context's shared counter."""
    return ErrorPolicy(cfg.on_error, ctx.counter)


def build_from_config(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """Look up the format by name, build it, and reject config keys nobody read."""
    dataset = DATASETS.build(cfg.name, cfg, ctx)
    cfg.check_all_used()
    return dataset


def build_dataset(
    cfg: Any,
    media_specs: dict[str, MediaSpec],
    tokenizer,
    layout: TextLayout,
    split: str = "train",
    training: bool = True,
    counter: SkipCounter | None = None,
) -> Dataset:
    """Build the dataset the `data` config names (OmegaConf node or dict) for a model's media and tokenizer.

    `training=False` builds for generation/evaluation: every conversation ends with the assistant's
    generation prompt (a final assistant turn is left out of the prompt and kept as
    `ProcessedSample.target`), and a layout with chunk ends does not close the last chunk.
    `layout` is the model's `fusion.layout`.
    """
    config = DataConfig.from_any(cfg)
    set_media_limits(MediaLimits.from_config(config.media_limits))
    ctx = BuildContext(dict(media_specs), tokenizer, layout, counter or SkipCounter(), split, training)
    return build_from_config(config, ctx)
