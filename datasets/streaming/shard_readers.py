"""Read one shard from a given sample index: tar shards (WebDataset layout) and JSONL shards.

Plain `tarfile` rather than webdataset's pipeline: a reader must know the exact index of every
sample in its shard (the resume position), skip earlier samples without reading their bytes, and
name the member a damaged archive breaks at. webdataset's `gopen` still opens the URL (local paths,
`pipe:`, http), so every source webdataset reads can be streamed.
"""
from __future__ import annotations

import os
import re
import tarfile
from typing import Any, Iterator

from lamm.datasets.errors import DataError
from lamm.datasets.readers import Record, read_records

# WebDataset's sample grouping: the key is the member path up to the first dot of its file name.
KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
BLOCK = 512  # tar block size; a complete archive ends with zero blocks after its last member


def shard_urls(patterns: list[str]) -> list[str]:
    """Every shard URL of a `path` list, brace patterns (`train-{000..099}.tar`) expanded as webdataset does."""
    from webdataset.shardlists import expand_urls

    return [url for pattern in patterns for url in expand_urls(pattern)]


def _bad_shard(url: str, message: str, key: str | None = None) -> DataError:
    return DataError(f"cannot read shard: {message}", file=url, sample_id=key, reason="bad_shard")


def _open(url: str):
    from webdataset.gopen import gopen

    if "://" not in url and not url.startswith("pipe:") and not os.path.isfile(url):
        raise _bad_shard(url, "file not found")
    try:
        return gopen(url, "rb")
    except OSError as exc:
        raise _bad_shard(url, exc.strerror or str(exc)) from None


def _ends_cleanly(url: str, offset: int) -> bool:
    """A local archive is complete when an end-of-archive block follows its last member."""
    if not os.path.isfile(url):
        return True  # a remote stream: its end cannot be checked by size
    return os.path.getsize(url) - offset >= BLOCK


def read_tar_shard(url: str, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, sample) for the samples of a tar shard from index `start`; a sample is a dict
    `{"__key__", "__url__", ext: bytes}` of the consecutive members sharing a key.

    Samples before `start` are skipped without reading their bytes. A damaged or truncated archive is a
    DataError (reason `bad_shard`) naming the shard and the member it breaks at, raised where it is met."""
    with _open(url) as stream:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")
        except tarfile.TarError as exc:
            raise _bad_shard(url, f"not a tar archive ({exc})") from None
        key, sample, index, member = None, {}, -1, None
        try:
            for info in tar:
                member = info.name
                match = KEY_EXT.match(info.name) if info.isfile() else None
                if match is None:
                    continue
                name, ext = match.groups()
                if name != key:
                    if key is not None and index >= start:
                        yield index, sample
                    key, sample, index = name, {"__key__": name, "__url__": url}, index + 1
                if index >= start:
                    sample[ext] = tar.extractfile(info).read()
        except tarfile.TarError as exc:
            raise _bad_shard(url, f"member {member} is cut short or damaged ({exc}; a truncated tar?)", key) from None
        if not _ends_cleanly(url, tar.offset):
            raise _bad_shard(url, f"the archive ends after member {member} without its end-of-archive block "
                                  "(a truncated tar)", key)
        if key is not None and index >= start:
            yield index, sample


def read_jsonl_shard(url: str, start: int = 0) -> Iterator[tuple[int, Record | DataError]]:
    """(index, record) for the records of a JSONL shard from index `start` (a bad line is a DataError item)."""
    if not url.endswith(".jsonl"):
        raise _bad_shard(url, "a JSONL shard's name ends in .jsonl")
    try:
        records = read_records(url)
    except DataError as err:
        raise _bad_shard(url, err.message) from None
    for index, item in enumerate(records):
        if index >= start:
            yield index, item
