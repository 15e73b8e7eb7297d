"""Pad processed samples into one `lamm.batch.Batch` and stack media per modality."""
from __future__ import annotations

from typing import Sequence

import torch

from lamm.batch import IGNORE_INDEX, Batch, MediaBatch
from lamm.datasets.errors import WorkerDataError, in_worker
from lamm.datasets.processor import ProcessedSample

PAD_SIDES = ("right", "left")


class Collator:
    """Pads ids/labels/mask (right for training, left for generation) and drops skipped (None) samples.

    Returns None when every sample of the batch was skipped; the training step skips a None batch.
    A `WorkerDataError` item (a DataError met in a DataLoader worker under `on_error: raise`) is
    returned as is inside a worker, so the DataLoader re-raises it in the main process as the same
    one-line DataError; outside a worker the collator raises that DataError itself.
    """

    def __init__(self, pad_token_id: int, pad_side: str = "right", pad_to_multiple_of: int | None = None) -> None:
        if pad_side not in PAD_SIDES:
            raise ValueError(f"unknown pad_side {pad_side!r}; expected one of {', '.join(PAD_SIDES)}")
        self.pad_token_id = pad_token_id
        self.pad_side = pad_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def _pad(self, seqs: list[torch.Tensor], value: int, length: int) -> torch.Tensor:
        out = torch.full((len(seqs), length), value, dtype=torch.long)
        for row, seq in enumerate(seqs):
            if self.pad_side == "right":
                out[row, : len(seq)] = seq
            else:
                out[row, length - len(seq):] = seq
        return out

    @staticmethod
    def _stack(modality: str, tensors: list[torch.Tensor], owners: list[str]) -> torch.Tensor:
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            detail = ", ".join(f"{tuple(t.shape)} in {o!r}" for t, o in zip(tensors, owners))
            raise ValueError(f"{modality} tensors differ in shape within a batch ({detail}); "
                             "the encoder transform must return a fixed shape")
        return torch.stack(tensors)

    def __call__(self, items: Sequence[ProcessedSample | WorkerDataError | None]) -> Batch | WorkerDataError | None:
        for item in items:
            if isinstance(item, WorkerDataError):
                if in_worker():
                    return item
                raise item.error()
        samples = [s for s in items if s is not None]
        if not samples:
            return None
        length = max(len(s.input_ids) for s in samples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = self._pad([s.input_ids for s in samples], self.pad_token_id, length)
        labels = self._pad([s.labels for s in samples], IGNORE_INDEX, length)
        mask = self._pad([torch.ones(len(s.input_ids), dtype=torch.long) for s in samples], 0, length)
        media: dict[str, MediaBatch] = {}
        modalities = sorted({m for s in samples for m in s.media})
        for modality in modalities:
            tensors, rows, owners = [], [], []
            for row, s in enumerate(samples):
                for t in s.media.get(modality, []):
                    tensors.append(t)
                    rows.append(row)
                    owners.append(s.id)
            if tensors:
                encoded = any(modality in s.encoded for s in samples)
                media[modality] = MediaBatch(self._stack(modality, tensors, owners), torch.tensor(rows, dtype=torch.long),
                                             encoded)
        return Batch(input_ids=input_ids, attention_mask=mask, labels=labels, media=media, ids=[s.id for s in samples])


def build_collator(tokenizer, pad_side: str = "right", pad_to_multiple_of: int | None = None) -> Collator:
    """A collator padding with the tokenizer's pad token (falling back to EOS)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
    return Collator(pad, pad_side=pad_side, pad_to_multiple_of=pad_to_multiple_of)
