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


def _read_jsonl(path: str) -> Iterator[Record | DataError]:
    index = 0
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
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
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
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
