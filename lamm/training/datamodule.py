"""The LightningDataModule: the data config -> datasets, the resumable sampler, the collator."""
from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from lamm.training.sampler import ResumableStreamSampler


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

    def setup(self, stage: str | None = None) -> None:
        from lamm.datasets import build_dataset

        if self.train_set is None:
            # Not yet supported by the resumable stream sampler: say so before any training work.
            if self.config.name == "mixture" and self.config.extra.get("mode") == "alternating":
                raise ValueError("data.mode=alternating is not supported by lamm-train yet; use data.mode=mixed")
            specs, caches = self.media_specs, []
            if self.config.feature_cache:
                from lamm.datasets.feature_cache import media_references, with_feature_cache

                specs, caches = with_feature_cache(self.config.feature_cache, specs, self.encoders)
            self.train_set = build_dataset(self.data_cfg, specs, self.tokenizer, self.layout)
            for cached in caches:  # every medium's features present: refused here, not mid-run
                cached.check(media_references(self.train_set))
            if not hasattr(self.train_set, "__len__"):
                raise ValueError(f"data.name={self.config.name}: streaming datasets are not supported by "
                                 "lamm-train yet (it needs a map-style dataset for exact resume)")

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def samples_per_step(self) -> int:
        """Global samples one optimizer step consumes."""
        return self.config.batch_size * self.accumulate * self.world_size

    def train_dataloader(self) -> DataLoader:
        from lamm.datasets import build_collator
        from lamm.datasets.packing import PackingCollator, sample_lengths

        bs = self.config.batch_size
        lengths = sample_lengths(self.train_set) if self.config.group_by_length else None
        sampler = ResumableStreamSampler(
            len(self.train_set), self.max_steps * self.accumulate * bs, seed=self.config.seed,
            shuffle=self.config.shuffle, world_size=self.world_size, rank=self.rank, batch_size=bs, lengths=lengths,
        )
        sampler.start_global = self.consumed
        collate = build_collator(self.tokenizer, self.config.pad_side)
        if self.config.packing:  # the same samples per step, packed into fewer rows
            collate = PackingCollator(collate.pad_token_id, self.config.max_length)
        return DataLoader(
            self.train_set, batch_size=bs, sampler=sampler, num_workers=self.config.num_workers,
            collate_fn=collate, persistent_workers=False, drop_last=True,
        )

    def skipped_summary(self) -> str | None:
        skipped = getattr(self.train_set, "skipped", None)
        return skipped.summary() if skipped is not None else None

    def state_dict(self) -> dict[str, int]:
        step = self.trainer.global_step if self.trainer is not None else 0
        return {"consumed": step * self.samples_per_step()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = int(state["consumed"])
