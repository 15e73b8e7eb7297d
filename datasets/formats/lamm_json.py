"""LAMM instruction JSON (2D images, 3D point clouds, videos) and LLaVA JSON: the same record shape.

LAMM picks a per-task system prompt from `task_type` (template `vicuna_lamm`); LLaVA records
usually mark the image with `<image>` in the text. See `conversation.py` for the schema.
"""
from __future__ import annotations

from functools import partial

from torch.utils.data import Dataset

from lamm.datasets.base import SampleDataset, parse_files
from lamm.datasets.build import make_policy, make_processor
from lamm.datasets.config import BuildContext, DataConfig
from lamm.datasets.formats.conversation import parse_conversation_record
from lamm.registry import DATASETS


def _build(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    policy = make_policy(cfg, ctx)
    samples = parse_files(cfg.paths(ctx.split), partial(parse_conversation_record, root=cfg.root), policy)
    tasks = cfg.option("tasks")
    if tasks:  # keep only records whose "task" (first question) is listed (e.g. the built-in closed-answer tasks)
        wanted = set(tasks)
        samples = [s for s in samples if s.extra.get("task") in wanted]
        if not samples:
            raise ValueError(f"data.tasks {sorted(wanted)} matches no sample in {cfg.paths(ctx.split)}")
    return SampleDataset(samples, make_processor(cfg, ctx), policy, name=cfg.name)


@DATASETS.register("lamm")
def build_lamm(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """LAMM instruction JSON: `image`, `pcl`/`pointcloud` or `video` plus a conversation and `task_type`."""
    return _build(cfg, ctx)


@DATASETS.register("llava")
def build_llava(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """LLaVA instruction JSON: `<image>` in the text marks the image (media first if absent)."""
    return _build(cfg, ctx)
