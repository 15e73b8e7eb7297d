"""The map-style dataset over parsed samples, and the raise-or-skip error policy.

Choice for `on_error: skip`: record structure (JSON, keys, roles) is validated eagerly when the
dataset is built, in the main process, so those skips are counted exactly once; media failures
(missing, corrupt, unreadable files) and truncation are found lazily in `__getitem__`, which returns
None for a skipped sample (the collator drops it). Lazy counts are made in shared memory
(`SkipCounter`), so they survive DataLoader workers.

With `on_error: raise` inside a DataLoader worker, `__getitem__` returns a `WorkerDataError` sentinel
instead of raising (torch would wrap the error in a multi-line "Caught ... in DataLoader worker"
message); the collator passes it on and the DataLoader re-raises the one-line DataError in the main
process. Outside workers the DataError is raised directly.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from torch.utils.data import Dataset

from lamm.datasets.errors import DataError, SampleSkipped, SkipCounter, WorkerDataError, in_worker
from lamm.datasets.processor import ProcessedSample, Processor
from lamm.datasets.readers import Record, read_records
from lamm.datasets.sample import Sample

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


class ErrorPolicy:
    """Raise a DataError (`on_error: raise`) or count it by reason and log the first few (`skip`)."""

    def __init__(self, on_error: str, counter: SkipCounter, log_limit: int = 10) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"unknown on_error {on_error!r}; expected one of {', '.join(ON_ERROR)}")
        self.on_error = on_error
        self.counter = counter
        self.log_limit = log_limit
        self._logged = 0

    def handle(self, err: DataError) -> None:
        if self.on_error == "raise":
            raise err
        self.counter.add(err.reason)
        if self._logged < self.log_limit:
            self._logged += 1
            log.warning("skipping sample: %s", err)

    def skip(self, skipped: SampleSkipped) -> None:
        """Count a sample dropped by policy (always skipped, whatever on_error says)."""
        self.counter.add(skipped.reason)


ParseFn = Callable[[Record], Sample]


def parse_files(paths: Iterable[str], parse: ParseFn, policy: ErrorPolicy) -> list[Sample]:
    """Parse every record of every file, applying the error policy to bad records."""
    samples: list[Sample] = []
    for path in paths:
        for item in read_records(path):
            if isinstance(item, DataError):
                policy.handle(item)
                continue
            try:
                samples.append(parse(item))
            except DataError as err:
                policy.handle(err)
    return samples


class SampleDataset(Dataset):
    """Parsed samples processed on access; `skipped` is the shared SkipCounter."""

    def __init__(self, samples: list[Sample], processor: Processor, policy: ErrorPolicy, name: str = "") -> None:
        self.samples = samples
        self.processor = processor
        self.policy = policy
        self.name = name

    @property
    def skipped(self) -> SkipCounter:
        return self.policy.counter

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> ProcessedSample | WorkerDataError | None:
        try:
            return process_or_skip(self.samples[index], self.processor, self.policy)
        except DataError as err:  # only on_error: raise gets here
            if in_worker():
                return WorkerDataError(err)
            raise


def process_or_skip(sample: Sample, processor: Processor, policy: ErrorPolicy) -> ProcessedSample | None:
    """Process a sample; None (counted) when it is skipped."""
    try:
        out = processor(sample)
    except SampleSkipped as skipped:
        policy.skip(skipped)
        return None
    except DataError as err:
        policy.handle(err)
        return None
    if out.truncated:
        policy.counter.add("truncated")
    return out
