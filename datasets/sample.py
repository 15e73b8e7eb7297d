"""The parsed, format-independent sample: turns of text with media markers, plus media references."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from lamm.tokens import PLACEHOLDERS

Role = Literal["user", "assistant", "document"]

# In turn text a medium is marked by its modality's placeholder string (LLaVA writes "<image>").
MARKER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))
MODALITY_OF_MARKER: dict[str, str] = {v: k for k, v in PLACEHOLDERS.items()}


@dataclass(frozen=True)
class MediaRef:
    """Where one medium comes from: a resolved path, or in-memory bytes (WebDataset members)."""

    modality: str  # "image" | "video" | "pointcloud"
    path: str  # file or frame folder; for bytes the member name (its extension picks the decoder)
    field: str  # the record key it came from, for error messages
    data: bytes | None = None


@dataclass
class Turn:
    """One message; `input` is Alpaca's optional context (Multimodal-GPT's "### Input:" block)."""

    role: Role
    text: str
    input: str | None = None


@dataclass
class Sample:
    """One training example: turns whose text marks media by placeholder, in the order of `media`.

    `kind` is "chat" (loss on assistant turns) or "document" (interleaved text, loss on all text).
    `extra` keeps every record key the parser did not consume (task, options, answer, meta, ...).
    """

    id: str
    turns: list[Turn]
    media: list[MediaRef] = field(default_factory=list)
    task_type: str | None = None
    kind: Literal["chat", "document"] = "chat"
    source: str = "<memory>"
    extra: dict[str, Any] = field(default_factory=dict)

    def media_of(self, modality: str) -> list[MediaRef]:
        """This sample's media of one modality, in order."""
        return [m for m in self.media if m.modality == modality]

    @property
    def modalities(self) -> set[str]:
        return {m.modality for m in self.media}


def with_media_first(sample: Sample) -> Sample:
    """A copy where each modality whose media have no marker in the text gets them at the start of the
    first user (or document) turn, LLaVA's convention for text that does not say where the media go."""
    present = {MODALITY_OF_MARKER[m] for t in sample.turns for m in MARKER_RE.findall(t.text)}
    prefix = "".join(PLACEHOLDERS[r.modality] for r in sample.media if r.modality not in present)
    if not prefix or not sample.turns:
        return sample
    turns = [Turn(t.role, t.text, t.input) for t in sample.turns]
    first = next((t for t in turns if t.role != "assistant"), turns[0])
    first.text = f"{prefix}\n{first.text}" if sample.kind == "chat" else prefix + first.text
    return dataclasses.replace(sample, turns=turns)
