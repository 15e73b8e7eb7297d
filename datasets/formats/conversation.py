"""Parse the LAMM/LLaVA conversation record shape into a Sample (shared by several formats).

    {"id": str, "image" | "video" | "pcl" | "pointcloud": path or [paths],
     "conversations": [{"from": "human" | "gpt", "value": str}, ...], "task_type": str, ...}

Media paths are relative to `root`. `<image>`/`<video>`/`<pointcloud>` in the text mark where a
medium goes; a modality with no marker has its media put first, at the start of the first human
turn. Every other key is kept on `Sample.extra`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lamm.datasets.errors import DataError
from lamm.datasets.readers import Record
from lamm.datasets.sample import MARKER_RE, MODALITY_OF_MARKER, MediaRef, Sample, Turn
from lamm.tokens import PLACEHOLDERS

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# Record key -> modality; "pointcloud" is accepted as a synonym of LAMM's "pcl".
MEDIA_KEYS = {"image": "image", "video": "video", "pcl": "pointcloud", "pointcloud": "pointcloud"}


@dataclass(frozen=True)
class ParseContext:
    """Where a record came from, for resolving media paths and naming errors."""

    file: str
    root: str
    index: int
    line: int | None = None
    sample_id: str | None = None

    @classmethod
    def of(cls, record: Record, root: str | None) -> "ParseContext":
        sid = record.data.get("id") if isinstance(record.data, dict) else None
        # Records without an id (Alpaca, Dolly) are named by their position in the file.
        sample_id = str(sid) if sid is not None else f"#{record.index}"
        return cls(record.file, root or os.path.dirname(os.path.abspath(record.file)), record.index, record.line, sample_id)

    def error(self, message: str, field: str | None, reason: str) -> DataError:
        return DataError(message, file=self.file, sample_id=self.sample_id, field=field, line=self.line, reason=reason)


def require_dict(record: Record, ctx: ParseContext) -> dict[str, Any]:
    if not isinstance(record.data, dict):
        raise ctx.error(f"expected a JSON object, found {type(record.data).__name__}", None, "bad_value")
    return record.data


def require_str(data: dict[str, Any], key: str, ctx: ParseContext, field: str | None = None,
                optional: bool = False) -> str | None:
    """A string value; missing or wrong-typed keys raise a DataError naming the field."""
    if key not in data or data[key] is None:
        if optional:
            return None
        raise ctx.error(f"missing key {key!r}", field or key, "missing_key")
    value = data[key]
    if not isinstance(value, str):
        raise ctx.error(f"expected a string, found {type(value).__name__}", field or key, "bad_value")
    return value


def parse_turns(data: dict[str, Any], ctx: ParseContext, key: str = "conversations") -> list[Turn]:
    """The turns of a conversation: non-empty, first from the human, roles human/gpt."""
    if key not in data:
        raise ctx.error(f"missing key {key!r}", key, "missing_key")
    conv = data[key]
    if not isinstance(conv, list):
        raise ctx.error(f"expected a list of turns, found {type(conv).__name__}", key, "bad_value")
    if not conv:
        raise ctx.error("empty conversation", key, "empty_conversation")
    turns: list[Turn] = []
    for i, item in enumerate(conv):
        field = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ctx.error(f"expected a turn object, found {type(item).__name__}", field, "bad_value")
        speaker = require_str(item, "from", ctx, f"{field}.from")
        value = require_str(item, "value", ctx, f"{field}.value")
        if speaker.lower() not in ROLES:
            raise ctx.error(f"unknown speaker {speaker!r} (expected 'human' or 'gpt')", f"{field}.from", "bad_value")
        turns.append(Turn(ROLES[speaker.lower()], value))  # type: ignore[arg-type]
    if turns[0].role != "user":
        raise ctx.error(f"first turn is from {conv[0]['from']!r}, expected 'human'", f"{key}[0].from",
                        "first_turn_not_human")
    return turns


def resolve(path: str, root: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def parse_media(data: dict[str, Any], ctx: ParseContext) -> list[MediaRef]:
    """Media references from the image/video/pcl/pointcloud keys (a path or a list of paths each)."""
    refs: list[MediaRef] = []
    for key, modality in MEDIA_KEYS.items():
        if key not in data or data[key] is None:
            continue
        value = data[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
            raise ctx.error("expected a path or a non-empty list of paths", key, "bad_value")
        refs.extend(MediaRef(modality, resolve(v, ctx.root), key) for v in items)
    return refs


def place_markers(turns: list[Turn], media: list[MediaRef], ctx: ParseContext) -> None:
    """Check marker counts per modality; a modality without markers gets its media put first."""
    text_markers = [MODALITY_OF_MARKER[m] for t in turns for m in MARKER_RE.findall(t.text)]
    first_user = next(t for t in turns if t.role == "user")
    prefix = ""
    for modality, marker in PLACEHOLDERS.items():
        found = text_markers.count(modality)
        refs = [m for m in media if m.modality == modality]
        if found == 0 and refs:
            prefix += marker * len(refs)
        elif found != len(refs):
            field = refs[0].field if refs else "conversations"
            raise ctx.error(f"text marks {found} {marker} but the sample has {len(refs)} {modality} media",
                            field, "marker_mismatch")
    if prefix:
        first_user.text = f"{prefix}\n{first_user.text}"


def parse_conversation_record(record: Record, root: str | None) -> Sample:
    """A LAMM/LLaVA conversation record as a Sample (eager structural validation)."""
    ctx = ParseContext.of(record, root)
    data = require_dict(record, ctx)
    turns = parse_turns(data, ctx)
    media = parse_media(data, ctx)
    place_markers(turns, media, ctx)
    task_type = data.get("task_type")
    if task_type is not None and not isinstance(task_type, str):
        raise ctx.error(f"expected a string, found {type(task_type).__name__}", "task_type", "bad_value")
    consumed = {"id", "conversations", "task_type", *MEDIA_KEYS}
    return Sample(
        id=ctx.sample_id or "",
        turns=turns,
        media=media,
        task_type=task_type,
        source=record.file,
        extra={k: v for k, v in data.items() if k not in consumed},
    )
