"""`lamm demo`: compose the default model from the shipped configs, run a forward pass and generate.

The README's main job until training lands: it proves the composed model (encoder -> projector
-> fusion -> LoRA LLM) runs end to end on this machine with the real SmolLM2-135M.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch


def _shape_image(size: int = 64):
    """A red circle on white: the kind of picture the built-in data is made of."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill="red")
    return image


def media_prompt(model, modality: str, question: str) -> str:
    """A chat prompt with one medium's placeholders in front of the question."""
    return model.llm.chat_prompt([{"role": "user", "content": model.placeholder_text(modality) + "\n" + question}])


def run_demo(overrides: Sequence[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from lamm.batch import Batch, MediaBatch
    from lamm.build import build_model
    from lamm.config import compose
    from lamm.policy import parameter_report

    console = Console()
    cfg = compose("train", overrides)
    torch.manual_seed(int(cfg.seed))
    start = time.perf_counter()
    model = build_model(cfg.model).eval()
    console.print(f"built in {time.perf_counter() - start:.1f}s: encoder={cfg.model.encoder.get('name')} "
                  f"projector={cfg.model.projector.get('name')} fusion={cfg.model.fusion.name} "
                  f"llm={cfg.model.llm.name}")
    table = Table(title="parameters (trainable / total)")
    for column in ("part", "trainable", "total"):
        table.add_column(column)
    for part, (trainable, total) in parameter_report(model).items():
        table.add_row(part, f"{trainable:,}", f"{total:,}")
    console.print(table)

    tok = model.tokenizer
    text = model.llm.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    enc = tok([text], return_tensors="pt")
    start = time.perf_counter()
    out = model.generate(Batch(enc.input_ids, enc.attention_mask), max_new_tokens=16)
    console.print(f"text-only answer ({time.perf_counter() - start:.1f}s): "
                  f"{tok.decode(out[0], skip_special_tokens=True)!r}")

    modality = "image" if "image" in model.encoders else next(iter(model.encoders))
    if modality != "image":
        console.print(f"[yellow]media demo skipped: the demo draws images, the model reads {modality}")
        return 0
    prompt = media_prompt(model, "image", "What colour is the shape?")
    enc = tok([prompt], return_tensors="pt")
    pixels = model.media_specs()["image"].transform(_shape_image()).unsqueeze(0)
    batch = Batch(enc.input_ids, enc.attention_mask, enc.input_ids.clone(),
                  {"image": MediaBatch(pixels, torch.tensor([0]))})
    with torch.no_grad():
        loss = model(batch).loss
    out = model.generate(batch, max_new_tokens=16)
    console.print(f"image prompt: loss {loss.item():.3f}; untrained answer "
                  f"{tok.decode(out[0], skip_special_tokens=True)!r} (train it with the quickstart)")
    return 0
