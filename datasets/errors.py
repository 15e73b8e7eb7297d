"""Data errors that name their file, sample and field, and the counter of skipped samples."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch._utils import ExceptionWrapper

# Fixed reason codes: the counter keeps one shared-memory column per reason so DataLoader workers
# can count into it (a dict in a worker would be lost with the worker).
REASONS: tuple[str, ...] = (
    "malformed_json",
    "missing_key",
    "bad_value",
    "empty_conversation",
    "first_turn_not_human",
    "marker_mismatch",
    "missing_file",
    "corrupt_image",
    "unreadable_video",
    "bad_pointcloud",
    "media_limit",  # over a configured size limit (pixels, frames, duration, points, bytes)
    "bad_media",  # the encoder transform rejected a loaded medium (wrong shape, too few columns, ...)
    "unsupported_modality",
    "too_long",
    "no_response",
    "bad_shard",
    "other",
)
# Events that are counted but do not drop the sample.
EVENTS: tuple[str, ...] = ("truncated",)
_COLUMNS: tuple[str, ...] = REASONS + EVENTS


class DataError(ValueError):
    """A problem with one input sample (or file); `str()` is one line naming file, sample and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        sample_id: str | None = None,
        field: str | None = None,
        line: int | None = None,
        reason: str = "other",
    ) -> None:
        self.message = " ".join(str(message).split())  # one line, whatever the cause said
        # A DataError rebuilt from a plain message (torch re-raises worker errors as `cls(text)`) keeps it.
        self._raw = str(message)
        self.file = file
        self.sample_id = sample_id
        self.field = field
        self.line = line
        self.reason = reason if reason in REASONS else "other"
        super().__init__(str(self))

    def with_context(self, *, file: str | None = None, sample_id: str | None = None,
                     field: str | None = None) -> "DataError":
        """A copy with missing context filled in (inner loaders don't know the sample)."""
        return DataError(
            self.message,
            file=self.file or file,
            sample_id=self.sample_id if self.sample_id is not None else sample_id,
            field=self.field or field,
            line=self.line,
            reason=self.reason,
        )

    def __str__(self) -> str:
        if self.file is None and self.sample_id is None and self.field is None and self.line is None:
            return self._raw
        where = f"data error in {self.file or '<unknown file>'}"
        if self.line is not None:
            where += f" line {self.line}"
        if self.sample_id is not None:
            where += f" sample {self.sample_id!r}"
        if self.field is not None:
            where += f" field {self.field!r}"
        return f"{where}: {self.message}"


class WorkerDataError(ExceptionWrapper):
    """A DataError caught in a DataLoader worker, carried to the main process as data.

    Raising in a worker makes torch re-raise `DataError("Caught DataError in DataLoader worker
    process 0.\nOriginal Traceback ...")`, many lines long. Instead a worker's dataset returns (and the
    collator passes on) this picklable sentinel; it is an `ExceptionWrapper`, which the DataLoader's
    main process re-raises through `reraise()`: the same one-line DataError, fields and reason intact.
    """

    def __init__(self, err: DataError) -> None:  # no super().__init__: there is no traceback to keep
        self.exc_type = DataError
        self.where = "in DataLoader worker process"
        self.message, self.file, self.sample_id = err.message, err.file, err.sample_id
        self.field, self.line, self.reason = err.field, err.line, err.reason
        self.exc_msg = str(err)

    def error(self) -> DataError:
        if self.file is None and self.sample_id is None and self.field is None and self.line is None:
            return DataError(self.exc_msg, reason=self.reason)
        return DataError(self.message, file=self.file, sample_id=self.sample_id, field=self.field, line=self.line,
                         reason=self.reason)

    def reraise(self):
        raise self.error() from None


def in_worker() -> bool:
    """True inside a DataLoader worker process."""
    return torch.utils.data.get_worker_info() is not None


class SampleSkipped(Exception):
    """Raised when a sample is dropped by policy (e.g. `truncation: skip`), whatever `on_error` says."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class SkipReport:
    """A snapshot of the counter."""

    skipped: dict[str, int]
    truncated: int

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def __add__(self, other: "SkipReport") -> "SkipReport":
        reasons = {r: self.skipped.get(r, 0) + other.skipped.get(r, 0) for r in {*self.skipped, *other.skipped}}
        return SkipReport(skipped=reasons, truncated=self.truncated + other.truncated)

    def summary(self) -> str:
        """One line for the end of a run: skipped samples by reason and truncated samples."""
        if self.total_skipped:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
            text = f"skipped {self.total_skipped} samples ({reasons})"
        else:
            text = "skipped 0 samples"
        return f"{text}; truncated {self.truncated} samples"


class SkipCounter:
    """Counts skipped samples by reason, in shared memory so counts made in DataLoader workers survive.

    Each process writes only its own row (row 0: main process, row 1 + worker id: workers), so no
    lock is needed. Counts are events: a sample skipped in every epoch is counted every epoch.
    """

    def __init__(self, max_workers: int = 63) -> None:
        self._rows = max_workers + 1
        self._table = torch.zeros(self._rows, len(_COLUMNS), dtype=torch.int64).share_memory_()

    def _row(self) -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % (self._rows - 1)

    def add(self, reason: str, n: int = 1) -> None:
        """Count `n` samples skipped for `reason` (unknown reasons count as 'other')."""
        col = _COLUMNS.index(reason) if reason in _COLUMNS else _COLUMNS.index("other")
        self._table[self._row(), col] += n

    def report(self) -> SkipReport:
        """Totals over all processes."""
        totals = self._table.sum(0).tolist()
        counts = dict(zip(_COLUMNS, totals))
        return SkipReport(
            skipped={r: int(counts[r]) for r in REASONS if counts[r]},
            truncated=int(counts["truncated"]),
        )

    def counts(self) -> dict[str, int]:
        """Skipped samples by reason (only non-zero reasons)."""
        return self.report().skipped

    @property
    def truncated(self) -> int:
        return self.report().truncated

    def reset(self) -> None:
        """Zero every count (e.g. at the start of an epoch)."""
        self._table.zero_()

    def summary(self) -> str:
        """One line for the end of a run: skipped samples by reason and truncated samples."""
        return self.report().summary()
