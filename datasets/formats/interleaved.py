"""Interleaved image-text documents (MMC4-like JSONL or JSON list) for Flamingo-style training.

Schema, one document per record:

    {"id": str,                                   # optional; defaults to "#<record index>"
     "text_list": [str, ...],                     # the document's text chunks (sentences), non-empty
     "image_info": [{"image_name": str,           # path relative to `root` ("path" also accepted)
                     "matched_text_index": int}],  # the medium goes right BEFORE text_list[i]
     "video_info": [...], "pcl_info": [...]}      # optional, same shape ("video_name"/"pcl_name" or "path")

Chunks are joined with `separator` (default " "). Several media with the same index keep their
list order (images, then videos, then point clouds). Loss is on every text token (and EOS);
never on media placeholders or padding. Other keys are kept on `Sample.extra`.
"""
from __future__ import annotations

from functools import partial

from torch.utils.data import Dataset

from lamm.datasets.base import SampleDataset, parse_files
from lamm.datasets.build import make_policy, make_processor
from lamm.datasets.config import BuildContext, DataConfig
from lamm.datasets.formats.conversation import ParseContext, require_dict, resolve
from lamm.datasets.readers import Record
from lamm.datasets.sample import MediaRef, Sample, Turn
from lamm.registry import DATASETS
from lamm.tokens import PLACEHOLDERS

# info key -> (modality, name key)
INFO_KEYS = {
    "image_info": ("image", "image_name"),
    "video_info": ("video", "video_name"),
    "pcl_info": ("pointcloud", "pcl_name"),
}


def parse_document_record(record: Record, root: str | None, separator: str = " ") -> Sample:
    """One interleaved document as a Sample of kind "document"."""
    ctx = ParseContext.of(record, root)
    data = require_dict(record, ctx)
    if "text_list" not in data:
        raise ctx.error("missing key 'text_list'", "text_list", "missing_key")
    texts = data["text_list"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ctx.error("expected a list of strings", "text_list", "bad_value")
    if not texts:
        raise ctx.error("empty document", "text_list", "empty_conversation")
    before: list[list[MediaRef]] = [[] for _ in texts]
    for key, (modality, name_key) in INFO_KEYS.items():
        infos = data.get(key) or []
        if not isinstance(infos, list):
            raise ctx.error("expected a list", key, "bad_value")
        for i, info in enumerate(infos):
            field = f"{key}[{i}]"
            if not isinstance(info, dict):
                raise ctx.error(f"expected an object, found {type(info).__name__}", field, "bad_value")
            name = info.get(name_key, info.get("path"))
            if not isinstance(name, str) or not name:
                raise ctx.error(f"missing key {name_key!r}", f"{field}.{name_key}", "missing_key")
            idx = info.get("matched_text_index")
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise ctx.error("missing or non-integer key 'matched_text_index'", f"{field}.matched_text_index",
                                "missing_key")
            if not 0 <= idx < len(texts):
                raise ctx.error(f"matched_text_index {idx} out of range for {len(texts)} text chunks",
                                f"{field}.matched_text_index", "bad_value")
            before[idx].append(MediaRef(modality, resolve(name, ctx.root), key))
    parts: list[str] = []
    media: list[MediaRef] = []
    for chunk, refs in zip(texts, before):
        # Media sit right before their chunk with no separator, as "<image>Text" in OpenFlamingo.
        parts.append("".join(PLACEHOLDERS[r.modality] for r in refs) + chunk)
        media.extend(refs)
    return Sample(
        id=ctx.sample_id or "",
        turns=[Turn("document", separator.join(parts))],
        media=media,
        kind="document",
        source=record.file,
        extra={k: v for k, v in data.items() if k not in {"id", "text_list", *INFO_KEYS}},
    )


@DATASETS.register("interleaved")
def build_interleaved(cfg: DataConfig, ctx: BuildContext) -> Dataset:
    """Interleaved documents; always rendered with the `document` template."""
    if cfg.template not in (None, "document"):
        raise ValueError(f"dataset 'interleaved' renders documents with template 'document', not {cfg.template!r}")
    policy = make_policy(cfg, ctx)
    parse = partial(parse_document_record, root=cfg.root, separator=cfg.option("separator", " "))
    samples = parse_files(cfg.paths(ctx.split), parse, policy)
    return SampleDataset(samples, make_processor(cfg, ctx, template="document"), policy, name=cfg.name)
