"""Benchmark: memory and time of `lamm import hf_llava` on a LLaVA-1.5-7B-shaped checkpoint.

Not a test. The source folders are llava-hf layouts whose safetensors files are sparse (a real header
with every 7B key and shape, data that takes no disk), so the 7B key layout costs nothing to build:

1. `mapping`: the importer's plan for the true 7B shapes (config, every key checked against the meta
   model transformers builds, the projector read): time and peak RSS.
2. `write`: the whole import (folders streamed shard by shard, then verified by rebuilding the model)
   for the same key layout at reduced width, so it fits a shared machine: peak anonymous memory as a
   multiple of the checkpoint's bytes (1.0 = one copy; the source is memory-mapped, never copied whole).

    python scripts/bench_import.py [--part mapping|write|both]
"""
from __future__ import annotations

import argparse
import json
import struct
import tempfile
import threading
import time
from pathlib import Path

DTYPE_BYTES = {"F16": 2}


def _status(field: str) -> int:
    """A /proc/self/status memory figure in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakAnon:
    """The peak of RssAnon (memory that is a real copy, not a mapped file) while the block runs."""

    def __enter__(self) -> "PeakAnon":
        self.start = self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _status("RssAnon"))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def llava_config(width: str):
    """LLaVA-1.5-7B's config (CLIP ViT-L/14-336 + a 7B Llama), or the same depths at reduced width."""
    import transformers as tf

    full = width == "7b"
    vision = tf.CLIPVisionConfig(hidden_size=1024 if full else 256, intermediate_size=4096 if full else 1024,
                                 num_hidden_layers=24, num_attention_heads=16 if full else 4, image_size=336,
                                 patch_size=14, projection_dim=768)
    text = tf.LlamaConfig(vocab_size=32064, hidden_size=4096 if full else 512,
                          intermediate_size=11008 if full else 1376, num_hidden_layers=32,
                          num_attention_heads=32 if full else 8, num_key_value_heads=32 if full else 8,
                          max_position_embeddings=4096, tie_word_embeddings=False)
    return tf.LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                          vision_feature_layer=-2, vision_feature_select_strategy="default")


def write_sparse_llava(folder: Path, width: str) -> int:
    """A llava-hf folder whose model.safetensors has the real key layout in fp16 but sparse (zero) data;
    returns the checkpoint's bytes."""
    import torch
    import transformers as tf

    from lamm.llm.tiny import tiny_tokenizer

    config = llava_config(width)
    with torch.device("meta"):
        model = tf.LlavaForConditionalGeneration(config)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, tensor in model.state_dict().items():
        size = tensor.numel() * DTYPE_BYTES["F16"]
        header[name] = {"dtype": "F16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    folder.mkdir(parents=True)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # sparse: the data takes no disk and reads as zeros
    config.save_pretrained(folder)
    tokenizer = tiny_tokenizer(512)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = tf.LlavaProcessor(image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 336},
                                                                        crop_size={"height": 336, "width": 336}),
                                  tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default")
    processor.save_pretrained(folder)
    return offset


def bench_mapping(tmp: Path) -> dict:
    from lamm.zoo.llava import import_hf_llava

    src = tmp / "llava-7b"
    checkpoint_bytes = write_sparse_llava(src, "7b")
    start = time.perf_counter()
    with PeakAnon() as mem:
        plan = import_hf_llava(src, dtype="float16")
    return {"part": "mapping (LLaVA-1.5-7B shapes)", "checkpoint_GB": checkpoint_bytes / 1e9,
            "seconds": time.perf_counter() - start, "peak_anon_growth_MB": (mem.peak - mem.start) / 1e6,
            "projector_MB": sum(t.numel() * t.element_size() for t in plan.weights.values()) / 1e6,
            "peak_rss_GB": _status("VmHWM") / 1e9}


def bench_write(tmp: Path) -> dict:
    from lamm.zoo import import_checkpoint

    src = tmp / "llava-narrow"
    checkpoint_bytes = write_sparse_llava(src, "narrow")
    start = time.perf_counter()
    with PeakAnon() as mem:
        import_checkpoint("hf_llava", src, tmp / "imported", {"dtype": "float16"})
    growth = mem.peak - mem.start
    return {"part": "write + verify (7B key layout, reduced width)", "checkpoint_GB": checkpoint_bytes / 1e9,
            "seconds": time.perf_counter() - start, "peak_anon_growth_GB": growth / 1e9,
            "copies_of_checkpoint": growth / checkpoint_bytes, "peak_rss_GB": _status("VmHWM") / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("mapping", "write", "both"), default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for part, bench in (("mapping", bench_mapping), ("write", bench_write)):
            if args.part in (part, "both"):
                result = bench(Path(tmp))
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
