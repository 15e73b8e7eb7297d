"""WebDataset tar shards streamed as an IterableDataset, so millions of samples never sit in memory.

A sample is the group of tar members sharing a key (`<key>.<ext>`):

- `<key>.json`: a LAMM/LLaVA conversation record ("conversations", "task_type", optional "id", ...);
- media members: images `.png/.jpg/.jpeg/.webp`, videos `.mp4/.avi/.webm/.mkv/.mov`, point clouds
  `.npy/.ply/.pcd`; several of one kind use `<key>.0.png`, `<key>.1.png`, ...

By default every media member is used, in member-name order per modality. The JSON may instead
name members explicitly by their extension: `"image": "png"` or `"image": ["0.png", "1.png"]`
(same for "video" and "pcl"/"pointcloud"). Shards are split across ranks and DataLoader workers
(`assign_shards`): each sample is read once per epoch, even with fewer shards than readers.
"""
from __future__ import annotations

import json
import logging
import random
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, IterableDataset

from lamm.datasets.base import ErrorPolicy, process_or_skip
from lamm.datasets.build import make_policy, make_processor
from lamm.datasets.config import BuildContext, DataConfig
from lamm.datasets.errors import DataError, WorkerDataError, in_worker
from lamm.datasets.formats.conversation import MEDIA_KEYS, place_markers, parse_turns
from lamm.datasets.processor import ProcessedSample, Processor
from lamm.datasets.sample import MediaRef, Sample
from lamm.registry import DATASETS

log = logging.getLogger(__name__)

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


def assign_shards(num_shards: int, slot: int, total: int) -> tuple[list[int], int, int]:
    """Which shards reader `slot` of `total` (rank * num_workers + worker) streams, and which of their samples.

    Returns (shard indices, member, group): the reader keeps sample j of each of its shards when
    j % group == member. With at least `total` shards each reader gets whole shards (group 1); with
    fewer, reader t streams shard t % num_shards, shared with the other readers of that shard, which
    keep every group-th sample each. Either way every sample goes to exactly one reader, and no
    reader (so no rank) is left without data.
    """
    if num_shards >= total:
        return list(range(slot, num_shards, total)), 0, 1
    shard = slot % num_shards
    sharing = range(shard, total, num_shards)
    return [shard], sharing.index(slot), len(sharing)


def reader_slot() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers) of this process (torch.distributed, RANK/WORLD_SIZE, DataLoader)."""
    from webdataset.utils import pytorch_worker_info

    return pytorch_worker_info()


class WebDatasetStream(IterableDataset):
    """Streams processed samples from tar shards; skipped samples are counted, not yielded.

    Shards are split across ranks and DataLoader workers by `assign_shards`: every sample is read by
    exactly one reader per epoch. With fewer shards than readers (ranks x workers) readers share shards
    sample by sample, and a warning (once, from rank 0) says that more shards would stream faster.
    """

    def __init__(self, urls: list[str], processor: Processor, policy: ErrorPolicy, shuffle_buffer: int = 0,
                 shuffle_shards: bool = False, seed: int = 0, name: str = "webdataset") -> None:
        from webdataset.shardlists import expand_urls

        self.urls = [u for pattern in urls for u in expand_urls(pattern)]  # brace patterns, per list entry
        if not self.urls:
            raise ValueError(f"data config for dataset {name!r} names no shards")
        self.processor = processor
        self.policy = policy
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.name = name
        self.epoch = 0
        # Shared so the warning is logged once per run, though workers are new processes every epoch.
        self._warned = torch.zeros(1, dtype=torch.uint8).share_memory_()

    @property
    def skipped(self):
        return self.policy.counter

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the shard order for this epoch (same order on every rank and worker)."""
        self.epoch = epoch

    def _handler(self, exc: Exception) -> bool:
        # A broken tar member or shard: raise, or count it and keep streaming.
        err = DataError(f"cannot read shard ({exc})", file=", ".join(self.urls), reason="bad_shard")
        if self.policy.on_error == "raise":
            raise err from exc
        self.policy.handle(err)
        return True

    def _warn_few_shards(self, world_size: int, num_workers: int, rank: int, worker: int) -> None:
        total = world_size * num_workers
        if len(self.urls) >= total or rank != 0 or worker != 0 or self._warned.item():
            return
        self._warned.fill_(1)
        log.warning(
            "webdataset %r: %d shard(s) for %d rank(s) x %d DataLoader worker(s); readers share shards and each "
            "keeps part of their samples (no sample lost or repeated), but every reader decodes a whole shard: "
            "write at least %d shards to stream efficiently", self.name, len(self.urls), world_size, num_workers, total)

    def _my_shards(self) -> tuple[list[str], int, int]:
        rank, world_size, worker, num_workers = reader_slot()
        self._warn_few_shards(world_size, num_workers, rank, worker)
        urls = list(self.urls)
        if self.shuffle_shards:  # the same permutation in every reader, so the split stays a partition
            random.Random(f"{self.seed}:{self.epoch}").shuffle(urls)
        shards, member, group = assign_shards(len(urls), rank * num_workers + worker, world_size * num_workers)
        return [urls[i] for i in shards], member, group

    @staticmethod
    def _keep_share(src: Iterator[dict], member: int, group: int) -> Iterator[dict]:
        seen: dict[str, int] = {}
        for raw in src:
            url = str(raw.get("__url__"))
            j = seen.get(url, 0)
            seen[url] = j + 1
            if j % group == member:
                yield raw

    def _pipeline(self):
        import webdataset as wds  # heavy import, only when streaming starts

        urls, member, group = self._my_shards()
        pipeline = wds.WebDataset(
            urls,
            handler=self._handler,
            shardshuffle=False,  # done in _my_shards, identically in every reader
            nodesplitter=None,  # split in _my_shards
            workersplitter=None,
            empty_check=False,  # a reader may find only skipped samples
        )
        if group > 1:
            pipeline = pipeline.compose(lambda src: self._keep_share(src, member, group))
        if self.shuffle_buffer:
            pipeline = pipeline.shuffle(self.shuffle_buffer)
        return pipeline

    def __iter__(self) -> Iterator[ProcessedSample | WorkerDataError]:
        try:
            for raw in self._pipeline():
                try:
                    sample = parse_wds_sample(raw)
                except DataError as err:
                    self.policy.handle(err)
                    continue
                out = process_or_skip(sample, self.processor, self.policy)
                if out is not None:
                    yield out
        except DataError as err:  # on_error: raise; in a worker, hand the one-line error to the main process
            if not in_worker():
                raise
            yield WorkerDataError(err)


@DATASETS.register("webdataset")
def build_webdataset(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """Tar shards (brace patterns like `train-{000000..000099}.tar` are expanded by webdataset)."""
    train = ctx.split == "train"
    buffer = int(cfg.option("shuffle_buffer", 1000))
    return WebDatasetStream(
        cfg.paths(ctx.split),
        make_processor(cfg, ctx),
        make_policy(cfg, ctx),
        shuffle_buffer=buffer if cfg.shuffle and train else 0,
        shuffle_shards=bool(cfg.shuffle and train),
        seed=cfg.seed,
        name=cfg.name,
    )
