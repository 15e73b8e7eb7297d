"""The LightningDataModule: the data config -> datasets, the resumable sampler or stream, the collator.

Map-style data goes through `ResumableStreamSampler` (position: global samples consumed). Streamed data
(webdataset, jsonl_shards, alternating or streamed mixtures) is read by one endless reader per rank and
DataLoader worker (`lamm.datasets.streaming.loader`); each batch brings its reader's position, and a
checkpoint stores every rank's reader positions, so a resumed run reads on from exactly the next sample.

Test hook: `LAMM_SAMPLE_LOG=<folder>` appends one JSON line per training batch (step, rank, reader,
sample ids, epochs) to `<folder>/rank<r>.jsonl`, so tests can check which samples a run trained on.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from lamm.training.sampler import ResumableStreamSampler

SAMPLE_LOG_ENV = "LAMM_SAMPLE_LOG"


class LammDataModule(L.LightningDataModule):
    """Builds the train dataset for a model's media specs and tokenizer; resumes mid-stream."""

    def __init__(self, data_cfg: Any, model: Any, max_steps: int, accumulate: int = 1) -> None:
        super().__init__()
        from lamm.datasets.config import DataConfig

        self.data_cfg = data_cfg
        self.config = DataConfig.from_any(data_cfg)
        self.media_specs = model.media_specs()
        self.encoders = dict(model.encoders)  # a frozen-feature cache is checked against them
        self.tokenizer = model.tokenizer
        self.layout = model.fusion.layout  # how the model's fusion writes media into the text
        self.max_steps, self.accumulate = max_steps, accumulate
        self.consumed = 0  # global samples consumed, restored from a checkpoint
        self.train_set = None
        # Streams: this rank's reader positions and batch count, and the checkpoint's (all ranks).
        self.positions: list[Any] = []
        self.batches = 0
        self.saved_stream: dict[str, Any] | None = None
        self.skipped_totals = None  # a SkipReport over all ranks, gathered at each checkpoint

    def setup(self, stage: str | None = None) -> None:
        from lamm.datasets import build_dataset

        if self.train_set is None:
            specs, caches = self.media_specs, []
            if self.config.feature_cache:
                from lamm.datasets.feature_cache import media_references, with_feature_cache

                specs, caches = with_feature_cache(self.config.feature_cache, specs, self.encoders)
            self.train_set = build_dataset(self.data_cfg, specs, self.tokenizer, self.layout)
            for cached in caches:  # every medium's features present: refused here, not mid-run
                cached.check(media_references(self.train_set))
            if not hasattr(self.train_set, "__len__") and not self.streams:
                raise ValueError(f"data.name={self.config.name}: this dataset streams without a resumable position; "
                                 "lamm-train needs a map-style dataset or a lamm.datasets.streaming stream")
            if self.streams and (self.config.packing or self.config.group_by_length):
                raise ValueError(f"data.packing and data.group_by_length need a map-style dataset; data.name="
                                 f"{self.config.name} streams (set both to false)")

    @property
    def streams(self) -> bool:
        from lamm.datasets.streaming.base import ResumableStream

        return isinstance(self.train_set, ResumableStream)

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def readers(self) -> int:
        """Stream readers per rank: one per DataLoader worker (the main process when there are none)."""
        return max(1, self.config.num_workers)

    def samples_per_step(self) -> int:
        """Global samples one optimizer step consumes."""
        return self.config.batch_size * self.accumulate * self.world_size

    def train_dataloader(self) -> DataLoader:
        from lamm.datasets import build_collator
        from lamm.datasets.packing import PackingCollator, sample_lengths

        bs = self.config.batch_size
        collate = build_collator(self.tokenizer, self.config.pad_side)
        if self.streams:
            return self._stream_loader(collate)
        lengths = sample_lengths(self.train_set) if self.config.group_by_length else None
        sampler = ResumableStreamSampler(
            len(self.train_set), self.max_steps * self.accumulate * bs, seed=self.config.seed,
            shuffle=self.config.shuffle, world_size=self.world_size, rank=self.rank, batch_size=bs, lengths=lengths,
        )
        sampler.start_global = self.consumed
        if self.config.packing:  # the same samples per step, packed into fewer rows
            collate = PackingCollator(collate.pad_token_id, self.config.max_length)
        return DataLoader(
            self.train_set, batch_size=bs, sampler=sampler, num_workers=self.config.num_workers,
            collate_fn=collate, persistent_workers=False, drop_last=True,
        )

    def _stream_loader(self, collate) -> DataLoader:
        from lamm.datasets.streaming.loader import ReaderLoop, StreamCollator

        self.positions, self.batches = [None] * self.readers, 0
        if self.saved_stream is not None:
            saved = self.saved_stream
            if (saved["world_size"], saved["num_workers"]) != (self.world_size, self.readers):
                raise ValueError(
                    f"the checkpoint's stream positions are for {saved['world_size']} process(es) x "
                    f"{saved['num_workers']} reader(s) each; this run has {self.world_size} x {self.readers}: resume "
                    "with the same trainer.devices x trainer.num_nodes and data.num_workers (at least 1 reader)")
            mine = saved["ranks"][self.rank]
            self.positions, self.batches = list(mine["positions"]), int(mine["batches"])
        loop = ReaderLoop(self.train_set, self.rank, self.world_size, self.config.num_workers, self.positions,
                          self.batches)
        return DataLoader(loop, batch_size=self.config.batch_size, num_workers=self.config.num_workers,
                          collate_fn=StreamCollator(collate), persistent_workers=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Keep the position of the reader a streamed batch came from (what a checkpoint saves)."""
        from lamm.datasets.streaming.loader import StreamBatch

        if isinstance(batch, StreamBatch):
            self.positions[batch.reader] = batch.position
            self.batches += 1
            self._log_samples(batch.batch.ids, batch.reader, batch.epochs)
            return batch.batch
        if batch is not None:
            self._log_samples(batch.ids, None, None)
        return batch

    def _log_samples(self, ids: list[str], reader: int | None, epochs: list[int] | None) -> None:
        folder = os.environ.get(SAMPLE_LOG_ENV)
        if not folder:
            return
        step = self.trainer.global_step if self.trainer is not None else 0
        line = {"step": step, "rank": self.rank, "reader": reader, "ids": list(ids), "epochs": epochs}
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(Path(folder) / f"rank{self.rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    def skipped_summary(self) -> str | None:
        """Skipped and truncated samples: over all ranks as of the last checkpoint (the final one is made
        after training), or this process's own count before any."""
        if self.skipped_totals is not None:
            return self.skipped_totals.summary()
        skipped = getattr(self.train_set, "skipped", None)
        return skipped.summary() if skipped is not None else None

    def state_dict(self) -> dict[str, Any]:
        step = self.trainer.global_step if self.trainer is not None else 0
        state: dict[str, Any] = {"consumed": step * self.samples_per_step()}
        # Every rank calls this when a checkpoint is made: gather their reader positions and skip counts.
        skipped = getattr(self.train_set, "skipped", None)
        if skipped is not None:
            reports = self._gather(skipped.report())
            self.skipped_totals = sum(reports[1:], reports[0])
        if self.streams:
            local = {"positions": list(self.positions) or [None] * self.readers, "batches": self.batches}
            state["stream"] = {"world_size": self.world_size, "num_workers": self.readers,
                               "ranks": self._gather(local)}
        return state

    def _gather(self, local: Any) -> list[Any]:
        import torch.distributed as dist

        if self.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
            return [local]
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, local)
        return everyone

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state["consumed"])
        self.saved_stream = state.get("stream")
