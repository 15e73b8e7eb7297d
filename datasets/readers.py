"""Read JSON (a list of records) and JSONL (one record per line) files, naming file and line on errors."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

from lamm.datasets.errors import DataError


@dataclass(frozen=True)
class Record:
    """One raw record; `line` is known for JSONL (1-based), `index` is its position in the file."""

    file: str
    index: int
    line: int | None
    data: Any


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"


def _read_jsonl(path: str) -> Iterator[Record | DataError]:
    index = 0
    with open(path, "rb") as fh:  # decoded per line: one badly encoded line is one bad sample
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield DataError(_not_utf8(exc), file=path, line=line_no, reason="malformed_json")
                index += 1
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield DataError(f"malformed JSON line ({exc.msg} at column {exc.colno})", file=path, line=line_no,
                                reason="malformed_json")
            else:
                yield Record(path, index, line_no, data)
            index += 1


def _read_json(path: str) -> Iterator[Record | DataError]:
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows editors) is not an error
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(exc), file=path, line=raw.count(b"\n", 0, exc.start) + 1,
                        reason="malformed_json") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # A broken JSON array cannot be resynchronised: the whole file is unusable, so raise always.
        raise DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", file=path, line=exc.lineno,
                        reason="malformed_json") from None
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of samples, found a {type(data).__name__}", file=path,
                        reason="bad_value")
    for i, item in enumerate(data):
        yield Record(path, i, None, item)


def read_records(path: str) -> Iterator[Record | DataError]:
    """Records of a .json or .jsonl file; a malformed JSONL line is yielded as a DataError to handle."""
    if not os.path.isfile(path):
        raise DataError("file not found", file=path, reason="missing_file")
    if path.endswith(".jsonl"):
        return _read_jsonl(path)
    return _read_json(path)
