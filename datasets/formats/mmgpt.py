"""Multimodal-GPT's unified instruction data: language-only and vision-language in one format.

Accepted records (JSON list or JSONL), rendered with template `mmgpt` by default:

- Alpaca style: {"instruction", "input"?, "output"}
- Dolly style: {"instruction", "context"?, "response", "category"?}
- vision-language: either of the above plus "image" | "video" | "pcl" (the `### Image:` block)
- multi-turn: a LAMM/LLaVA "conversations" record (continued Instruction/Response pairs)

Joint training of language-only and vision-language data uses the `mixture` dataset.
"""
from __future__ import annotations

from functools import partial

from torch.utils.data import Dataset

from lamm.datasets.base import SampleDataset, parse_files
from lamm.datasets.build import make_policy, make_processor
from lamm.datasets.config import BuildContext, DataConfig
from lamm.datasets.formats.conversation import (
    MEDIA_KEYS,
    ParseContext,
    parse_conversation_record,
    parse_media,
    place_markers,
    require_dict,
    require_str,
)
from lamm.datasets.readers import Record
from lamm.datasets.sample import Sample, Turn
from lamm.registry import DATASETS


def parse_instruction_record(record: Record, root: str | None) -> Sample:
    """An Alpaca/Dolly instruction record (optionally with media), or a conversation record."""
    ctx = ParseContext.of(record, root)
    data = require_dict(record, ctx)
    if "conversations" in data:
        return parse_conversation_record(record, root)
    instruction = require_str(data, "instruction", ctx)
    context = require_str(data, "input", ctx, optional=True) or require_str(data, "context", ctx, optional=True)
    out_key = "output" if "output" in data or "response" not in data else "response"
    output = require_str(data, out_key, ctx)
    turns = [Turn("user", instruction, input=context or None), Turn("assistant", output)]
    media = parse_media(data, ctx)
    place_markers(turns, media, ctx)
    consumed = {"id", "instruction", "input", "context", "output", "response", *MEDIA_KEYS}
    return Sample(
        id=ctx.sample_id or "",
        turns=turns,
        media=media,
        task_type=data.get("task_type") if isinstance(data.get("task_type"), str) else None,
        source=record.file,
        extra={k: v for k, v in data.items() if k not in consumed},
    )


@DATASETS.register("mmgpt")
def build_mmgpt(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """Multimodal-GPT instruction data (language-only and/or vision-language)."""
    policy = make_policy(cfg, ctx)
    samples = parse_files(cfg.paths(ctx.split), partial(parse_instruction_record, root=cfg.root), policy)
    return SampleDataset(samples, make_processor(cfg, ctx), policy, name=cfg.name)
