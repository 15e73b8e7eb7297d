"""WebDataset tar shards streamed as an IterableDataset, so millions of samples never sit in memory.

A sample is the group of tar members sharing a key (`<key>.<ext>`):

- `<key>.json`: a LAMM/LLaVA conversation record ("conversations", "task_type", optional "id", ...);
- media members: images `.png/.jpg/.jpeg/.webp`, videos `.mp4/.avi/.webm/.mkv/.mov`, point clouds
  `.npy/.ply/.pcd`; several of one kind use `<key>.0.png`, `<key>.1.png`, ...

By default every media member is used, in member-name order per modality. The JSON may instead
name members explicitly by their extension: `"image": "png"` or `"image": ["0.png", "1.png"]`
(same for "video" and "pcl"/"pointcloud"). Shards are read by `lamm.datasets.streaming`: split across
ranks and DataLoader workers (each sample once per epoch, even with fewer shards than readers),
shuffled by seed, and resumable at any sample.
"""
from __future__ import annotations

import json
from typing import Any

from torch.utils.data import Dataset

from lamm.datasets.build import make_policy, make_processor
from lamm.datasets.config import BuildContext, DataConfig
from lamm.datasets.errors import DataError
from lamm.datasets.formats.conversation import MEDIA_KEYS, place_markers, parse_turns
from lamm.datasets.sample import MediaRef, Sample
from lamm.datasets.streaming.shard_readers import read_tar_shard, shard_urls
from lamm.datasets.streaming.shard_stream import ShardStream, assign_shards
from lamm.registry import DATASETS

__all__ = ["MEMBER_MODALITY", "assign_shards", "build_webdataset", "parse_wds_sample"]

MEMBER_MODALITY: dict[str, str] = {
    **{e: "image" for e in ("png", "jpg", "jpeg", "webp", "bmp")},
    **{e: "video" for e in ("mp4", "avi", "webm", "mkv", "mov")},
    **{e: "pointcloud" for e in ("npy", "ply", "pcd")},
}


class _Ctx:
    """Error context of one streamed sample (duck-types ParseContext.error)."""

    def __init__(self, url: str, sample_id: str) -> None:
        self.file, self.sample_id = url, sample_id

    def error(self, message: str, field: str | None, reason: str) -> DataError:
        return DataError(message, file=self.file, sample_id=self.sample_id, field=field, reason=reason)


def _member_modality(ext: str) -> str | None:
    return MEMBER_MODALITY.get(ext.rsplit(".", 1)[-1].lower())


def parse_wds_sample(raw: dict[str, Any]) -> Sample:
    """A Sample from one WebDataset sample dict (`__key__`, `__url__`, ext -> bytes)."""
    url, key = str(raw.get("__url__", "<stream>")), str(raw.get("__key__", "?"))
    ctx = _Ctx(url, key)
    if "json" not in raw:
        raise ctx.error("sample has no .json member", "json", "missing_key")
    try:
        data = json.loads(raw["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ctx.error(f"malformed JSON ({exc})", "json", "malformed_json") from None
    if not isinstance(data, dict):
        raise ctx.error(f"expected a JSON object, found {type(data).__name__}", "json", "bad_value")
    if data.get("id") is not None:
        ctx.sample_id = str(data["id"])
    turns = parse_turns(data, ctx)  # type: ignore[arg-type]
    media: list[MediaRef] = []
    named = {k: v for k, v in data.items() if k in MEDIA_KEYS and v is not None}
    if named:
        for field, value in named.items():
            for ext in [value] if isinstance(value, str) else value:
                if not isinstance(ext, str) or ext not in raw:
                    raise ctx.error(f"sample has no member {key}.{ext}", field, "missing_file")
                media.append(MediaRef(MEDIA_KEYS[field], f"{url}:{key}.{ext}", field, raw[ext]))
    else:
        for ext in sorted(k for k in raw if not k.startswith("__") and _member_modality(k)):
            modality = _member_modality(ext)
            media.append(MediaRef(modality, f"{url}:{key}.{ext}", ext, raw[ext]))  # type: ignore[arg-type]
    place_markers(turns, media, ctx)  # type: ignore[arg-type]
    task_type = data.get("task_type") if isinstance(data.get("task_type"), str) else None
    return Sample(id=ctx.sample_id, turns=turns, media=media, task_type=task_type, source=url,
                  extra={k: v for k, v in data.items() if k not in {"id", "conversations", "task_type", *MEDIA_KEYS}})


@DATASETS.register("webdataset")
def build_webdataset(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """Tar shards (brace patterns like `train-{000000..000099}.tar` are expanded by webdataset)."""
    train = ctx.split == "train"
    return ShardStream(
        shard_urls(cfg.paths(ctx.split)), read_tar_shard, parse_wds_sample, make_processor(cfg, ctx), make_policy(cfg, ctx),
        shuffle=bool(cfg.shuffle and train), shuffle_buffer=int(cfg.option("shuffle_buffer", 1000)),
        seed=cfg.seed, name=cfg.name,
    )
