"""JSONL shards streamed like tar shards: each line a LAMM/LLaVA conversation record (`conversation.py`),
media paths relative to `root` (default: the shard's folder). For corpora too large to load as one
JSON list: the records are read shard by shard, split across ranks and workers, resumable at any line.
"""
from __future__ import annotations

from functools import partial

from torch.utils.data import Dataset

from lamm.datasets.build import make_policy, make_processor
from lamm.datasets.config import BuildContext, DataConfig
from lamm.datasets.errors import DataError
from lamm.datasets.formats.conversation import parse_conversation_record
from lamm.datasets.readers import Record
from lamm.datasets.sample import Sample
from lamm.datasets.streaming.shard_readers import read_jsonl_shard, shard_urls
from lamm.datasets.streaming.shard_stream import ShardStream
from lamm.registry import DATASETS


def parse_jsonl_item(item: Record | DataError, root: str | None) -> Sample:
    """A Sample from one line of a JSONL shard (a malformed line arrives as its DataError)."""
    if isinstance(item, DataError):
        raise item
    return parse_conversation_record(item, root)


@DATASETS.register("jsonl_shards")
def build_jsonl_shards(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """JSONL shard files (brace patterns like `train-{000..099}.jsonl` expand as for tar shards)."""
    train = ctx.split == "train"
    return ShardStream(
        shard_urls(cfg.paths(ctx.split)), read_jsonl_shard, partial(parse_jsonl_item, root=cfg.root),
        make_processor(cfg, ctx), make_policy(cfg, ctx),
        shuffle=bool(cfg.shuffle and train), shuffle_buffer=int(cfg.option("shuffle_buffer", 1000)),
        seed=cfg.seed, name=cfg.name,
    )
