"""The `data` config node as a dataclass, and the context every dataset factory receives."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from lamm.batch import MediaSpec
from lamm.tokens import TextLayout
from lamm.datasets.errors import SkipCounter
from lamm.plain_config import to_plain
from lamm.suggest import closest


def data_mapping(cfg: Any) -> dict[str, Any]:
    """A data config node as a new plain dict (see `to_plain`); anything but a mapping is a TypeError."""
    plain = to_plain(cfg)
    if not isinstance(plain, Mapping):
        raise TypeError(f"data config must be a mapping, found {type(cfg).__name__}")
    return plain


@dataclass
class DataConfig:
    """Keys shared by every format; format-specific keys go to `extra` and are read with `option()`."""

    name: str
    path: str | list[str] | None = None  # json/jsonl file(s), or shard URLs for webdataset
    val_path: str | list[str] | None = None
    root: str | None = None  # media root; default: the folder of each data file
    template: str | None = None  # None: the format's default template
    system_prompt: str | None = None  # None: template default; "task"; "none"; or literal text
    max_length: int | None = 2048
    truncation: str = "right"  # right | skip
    on_error: str = "raise"  # raise | skip
    # Read by the training DataModule, not by the datasets themselves.
    batch_size: int = 8
    global_batch_size: int | None = None  # samples per optimizer step over all devices (the trainer derives accumulation)
    num_workers: int = 0
    shuffle: bool = True
    seed: int = 0
    pad_side: str = "right"
    media_limits: dict[str, Any] | None = None  # MediaLimits overrides (datasets/media.py); null = defaults
    feature_cache: str | None = None  # a `lamm cache-features` folder: frozen encoders' outputs read, not computed
    packing: bool = False  # several samples per row up to max_length (block-diagonal attention)
    group_by_length: bool = False  # batches of similar length (less padding), an alternative to packing
    extra: dict[str, Any] = field(default_factory=dict)
    _consumed: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def from_any(cls, cfg: Any) -> "DataConfig":
        """Build from an OmegaConf node or dict; keys the dataclass lacks go to `extra`."""
        plain = data_mapping(cfg)
        if "name" not in plain:
            raise ValueError("data config has no 'name' (the dataset format, e.g. lamm, llava, mmgpt, "
                             "interleaved, webdataset, mixture)")
        known = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_") and f.name != "extra"}
        extra = {k: v for k, v in plain.items() if k not in known}
        return cls(**{k: v for k, v in plain.items() if k in known}, extra=extra)

    def option(self, key: str, default: Any = None) -> Any:
        """A format-specific key (marks it as used so leftover keys can be reported as typos)."""
        self._consumed.add(key)
        return self.extra.get(key, default)

    def unused_keys(self) -> list[str]:
        return sorted(set(self.extra) - self._consumed)

    def check_all_used(self) -> None:
        """Fail on config keys no component read (typos), with a did-you-mean."""
        unused = self.unused_keys()
        if not unused:
            return
        candidates = [f.name for f in dataclasses.fields(self) if not f.name.startswith("_")] + sorted(self._consumed)
        parts = []
        for key in unused:
            match = closest(key, candidates)
            parts.append(f"{key!r}" + (f" (did you mean {match!r}?)" if match else ""))
        raise ValueError(f"unknown key(s) in data config for dataset {self.name!r}: {', '.join(parts)}")

    def paths(self, split: str) -> list[str]:
        """The data files of a split ("train" -> path, "val" -> val_path)."""
        value = self.path if split == "train" else self.val_path if split == "val" else None
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; expected train or val")
        if value is None:
            key = "path" if split == "train" else "val_path"
            raise ValueError(f"data config for dataset {self.name!r} has no {key!r}")
        items = [value] if isinstance(value, str) else list(value)
        return [os.path.expanduser(p) for p in items]


@dataclass
class BuildContext:
    """What a dataset factory needs from the model: media specs, tokenizer, how its fusion lays media
    out in the text; plus the shared counter."""

    media_specs: dict[str, MediaSpec]
    tokenizer: Any
    layout: TextLayout
    counter: SkipCounter
    split: str = "train"
    training: bool = True
