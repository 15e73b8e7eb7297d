"""Multimodal packing: a batch's samples laid end to end in rows of at most `max_length` tokens.

Each sample keeps its own position ids (0, 1, ... from its first token), which is how the model and
the LLM tell samples apart: attention becomes block-diagonal (one causal block per sample; SDPA gets
the mask, flash-attention its varlen form), and a cross-attention fusion lets each sample see only its
own media. The loss is the mean over the same label tokens as unpacked, so it is the same loss.
"""
from __future__ import annotations

from typing import Sequence

import torch

from lamm.batch import IGNORE_INDEX, Batch
from lamm.datasets.collate import Collator
from lamm.datasets.processor import ProcessedSample


def balanced_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """As few rows as first-fit-decreasing needs, with the samples spread so rows are about equally long
    (longest sample to the shortest row): the padded batch is [rows, longest row], so balance is compute."""
    rows = first_fit_decreasing(lengths, capacity)
    balanced: list[list[int]] = [[] for _ in rows]
    load = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(len(rows)), key=load.__getitem__)
        balanced[r].append(i)
        load[r] += lengths[i]
    return balanced if max(load) <= capacity else rows


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of sample indices, each row's total length <= capacity (longest samples placed first)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > capacity:
            raise ValueError(f"data.packing: a sample of {lengths[i]} tokens is longer than data.max_length={capacity}")
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


class PackingCollator(Collator):
    """Packs a batch's samples into as few rows of `max_length` as fit (right padding after the last one)."""

    def __init__(self, pad_token_id: int, max_length: int) -> None:
        super().__init__(pad_token_id, pad_side="right")
        if not max_length or max_length <= 0:
            raise ValueError("data.packing needs data.max_length (the row length samples are packed into)")
        self.max_length = max_length

    def __call__(self, items):  # type: ignore[override]
        unpacked = super().__call__(items)  # drops skipped samples, stacks media, raises worker errors
        if not isinstance(unpacked, Batch):
            return unpacked
        samples = [s for s in items if isinstance(s, ProcessedSample)]
        return pack(unpacked, [len(s.input_ids) for s in samples], self.max_length, self.pad_token_id)


def pack(batch: Batch, lengths: Sequence[int], max_length: int, pad_token_id: int) -> Batch:
    """A right-padded batch (one sample per row, `lengths` real tokens each) packed into rows of `max_length`."""
    rows = balanced_rows(lengths, max_length)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    new_row = torch.empty(len(lengths), dtype=torch.long)
    order = []  # samples in packed text order
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            input_ids[r, at:at + n] = batch.input_ids[i, :n]
            labels[r, at:at + n] = batch.labels[i, :n]
            mask[r, at:at + n] = 1
            positions[r, at:at + n] = torch.arange(n)
            new_row[i] = r
            order.append(i)
            at += n
        # Padding continues the last sample's positions: it joins that sample's block, after all its real tokens.
        positions[r, at:] = torch.arange(n, n + width - at)
    rank = torch.empty(len(lengths), dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(len(order))
    media = {}
    for modality, item in batch.media.items():
        # Media in packed text order: by the rank of their sample, then as they were (text order per sample).
        keys = rank[item.sample_index] * (len(item) + 1) + torch.arange(len(item))
        sort = torch.argsort(keys)
        media[modality] = type(item)(item.data[sort], new_row[item.sample_index[sort]], item.encoded)
    return Batch(input_ids, mask, labels, media, ids=[batch.ids[i] for i in order], position_ids=positions)


def sample_lengths(dataset) -> list[int]:
    """Token count of every sample of a map-style dataset (text tokenised, no media loaded), for
    length-grouped batching; samples that fail to tokenise count 0 (they are skipped or raise later)."""
    from lamm.datasets.errors import DataError, SampleSkipped

    if not hasattr(dataset, "samples") or not hasattr(dataset, "processor"):
        raise ValueError(f"data.group_by_length: the {type(dataset).__name__} dataset cannot tell its sample lengths "
                         "up front; use one map-style format (lamm, llava, mmgpt, interleaved) or data.packing")
    lengths = []
    for sample in dataset.samples:
        try:
            lengths.append(len(dataset.processor.tokenize(sample).input_ids))
        except (DataError, SampleSkipped):
            lengths.append(0)
    return lengths
