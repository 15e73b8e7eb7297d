"""Write Hugging Face model folders tensor by tensor, so a 7B import never holds two copies in memory."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import save_file

MAX_SHARD_BYTES = 2 * 1024**3  # transformers' own default shard size for save_pretrained


def write_safetensors_shards(folder: Path, tensors: Iterable[tuple[str, Callable[[], torch.Tensor]]],
                             max_shard_bytes: int = MAX_SHARD_BYTES, prefix: str = "model") -> list[Path]:
    """Save `(name, load)` pairs as `model-0000i-of-0000n.safetensors` shards (+ index when several),
    loading each tensor only when its shard is written; returns the shard paths."""
    folder.mkdir(parents=True, exist_ok=True)
    # Sizes are known only once loaded: write greedily, starting a new shard past the limit.
    written: list[tuple[Path, list[str]]] = []
    batch: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal batch, size
        if batch:
            path = folder / f"{prefix}-part{len(written):05d}.safetensors"
            save_file(batch, str(path), metadata={"format": "pt"})
            written.append((path, list(batch)))
            batch, size = {}, 0

    for name, load in tensors:
        tensor = load().contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if batch and size + nbytes > max_shard_bytes:
            flush()
        batch[name] = tensor
        size += nbytes
    flush()
    if len(written) == 1:
        final = folder / f"{prefix}.safetensors"
        written[0][0].rename(final)
        return [final]
    total = len(written)
    paths, weight_map = [], {}
    for i, (path, names) in enumerate(written):
        final = folder / f"{prefix}-{i + 1:05d}-of-{total:05d}.safetensors"
        path.rename(final)
        paths.append(final)
        weight_map.update({n: final.name for n in names})
    (folder / f"{prefix}.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    return paths


def save_hf_folder(folder: Path, config: Any, tensors: Iterable[tuple[str, Callable[[], torch.Tensor]]],
                   *extras: Any) -> None:
    """An HF model folder: config.json, safetensors shards written tensor by tensor, and each of `extras`
    (tokenizer, image processor) saved beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    write_safetensors_shards(folder, tensors)
    for extra in extras:
        extra.save_pretrained(str(folder))
