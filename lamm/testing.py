"""Tiny, random, offline configurations and batches: for lamm's tests and for plug-in authors' tests."""
from __future__ import annotations

import copy

import torch

from lamm.batch import IGNORE_INDEX, Batch, MediaBatch

TINY_LLM = {"name": "tiny_random", "hidden_size": 64, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}
TINY_ENCODERS = {
    "small_cnn": {"name": "small_cnn", "image_size": 32, "width": 32, "base_channels": 8, "num_stages": 3},
    "small_vit": {"name": "small_vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2},
    "open_clip": {
        "name": "open_clip",
        "model_cfg": {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32}},
        "layer": -2,
    },
    "timm": {"name": "timm", "model_name": "vit_tiny_patch16_224", "img_size": 32},
    "video": {
        "name": "video",
        "num_frames": 3,
        "image_encoder": {"name": "small_cnn", "image_size": 32, "width": 32, "base_channels": 8, "num_stages": 3},
    },
    "point_bert": {
        "name": "point_bert", "num_points": 128, "num_groups": 8, "group_size": 8, "width": 32, "depth": 1,
        "heads": 2, "pointnet_dims": [16, 32, 64],
    },
}
TINY_PROJECTORS = {
    "linear": {"name": "linear"},
    "mlp": {"name": "mlp"},
    "perceiver": {"name": "perceiver", "num_latents": 4, "depth": 1, "heads": 2, "dim_head": 16, "ff_mult": 2},
}
TINY_FUSIONS = {
    "prefix": {"name": "prefix"},
    "gated_xattn": {"name": "gated_xattn", "every": 2, "heads": 2, "dim_head": 16, "ff_mult": 2},
}
TINY_LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}


def tiny_model_config(
    encoder: str = "small_cnn", projector: str = "mlp", fusion: str = "prefix", policy: dict | None = None
) -> dict:
    """A `model` config of tiny parts; `policy` overrides parts of the default (everything but the LLM trains, LLM by LoRA)."""
    return copy.deepcopy(
        {
            "llm": TINY_LLM,
            "encoder": TINY_ENCODERS[encoder],
            "projector": TINY_PROJECTORS[projector],
            "fusion": TINY_FUSIONS[fusion],
            "lora": TINY_LORA,
            "policy": {"encoder": "full", "projector": "full", "fusion": "full", "llm": "lora", **(policy or {})},
        }
    )




def benchmark_model(tiny: bool, overrides: list[str]):
    """The model a benchmark script measures, in eval mode: a tiny random one (`--tiny`) or the one lamm-train
    builds for `overrides` (scripts/bench_eval.py, scripts/bench_fewshot.py)."""
    from lamm.build import build_model

    if tiny:
        cfg = tiny_model_config()
    else:
        from lamm.config import compose

        cfg = compose("train", overrides).model
    return build_model(cfg).eval()


def media_text(model, modality: str) -> str:
    """The placeholder text one medium occupies in this model's prompts."""
    return model.placeholder_text(modality)


def random_media(model, modality: str, count: int, seed: int = 0) -> torch.Tensor:
    """`count` random raw media of `modality`, put through the model's own transform and stacked."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    transform = model.media_specs()[modality].transform

    def raw():
        if modality == "image":
            return Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
        if modality == "video":
            return rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
        return rng.normal(size=(300, 3)).astype(np.float32)

    return torch.stack([transform(raw()) for _ in range(count)])


def text_batch(model, texts: list[str], media: dict[str, tuple[torch.Tensor, list[int]]] | None = None,
               padding_side: str = "left", labels: bool = True) -> Batch:
    """Tokenise `texts` (placeholders already in them) into a Batch with the given media."""
    enc = model.tokenizer(texts, return_tensors="pt", padding=True, padding_side=padding_side)
    lab = enc.input_ids.masked_fill(enc.attention_mask == 0, IGNORE_INDEX) if labels else None
    mb = {m: MediaBatch(data, torch.tensor(owners)) for m, (data, owners) in (media or {}).items()}
    return Batch(enc.input_ids, enc.attention_mask, lab, mb, [str(i) for i in range(len(texts))])


def colour_answer_batch(model) -> Batch:
    """Two image questions whose answer token alone is supervised, as the data pipeline labels them."""
    ph = media_text(model, "image")
    batch = text_batch(model, [f"{ph} colour? red", f"{ph} colour? blue"], {"image": (random_media(model, "image", 2), [0, 1])},
                       padding_side="left")
    batch.labels[:, :-1] = IGNORE_INDEX
    return batch


def fit_fixed_batch(model, optimizer: torch.optim.Optimizer, batch: Batch, steps: int,
                    autocast_dtype: torch.dtype | None = None) -> list[float]:
    """Train `steps` optimiser steps on one batch; the loss after each (does the model learn at all?).

    `autocast_dtype` runs the forward pass (only, as Lightning's mixed precision does) under CPU autocast.
    """
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = model(batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


TINY_VISION_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                         image_size=32, patch_size=8)
TINY_VISION_MEAN, TINY_VISION_STD = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]


def save_tiny_vision_tower(kind: str, folder) -> "Path":
    """Save a tiny random Hugging Face vision tower + its image processor to `folder/kind`, as transformers does.

    `kind`: `clip` (CLIPVisionModel), `clip_full` (a two-tower CLIPModel, as openai's folders are),
    `siglip` (SiglipVisionModel) or `dinov2` (Dinov2Model); 32 px images, 8 px patches, 3 blocks of width 32.
    """
    from pathlib import Path

    import transformers as tf

    torch.manual_seed(0)
    clip_processor = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                          image_mean=TINY_VISION_MEAN, image_std=TINY_VISION_STD)
    if kind == "clip":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY_VISION_TOWER))
        processor = tf.CLIPImageProcessor(**clip_processor)
    elif kind == "clip_full":
        text = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=TINY_VISION_TOWER, projection_dim=16))
        processor = tf.CLIPImageProcessor(**clip_processor)
    elif kind == "siglip":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**TINY_VISION_TOWER))
        processor = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    elif kind == "dinov2":
        dino = {k: v for k, v in TINY_VISION_TOWER.items() if k != "intermediate_size"}
        model = tf.Dinov2Model(tf.Dinov2Config(**dino, mlp_ratio=2))
        processor = tf.BitImageProcessor(**clip_processor, do_convert_rgb=True)
    else:
        raise ValueError(f"save_tiny_vision_tower: unknown kind {kind!r} (clip, clip_full, siglip, dinov2)")
    path = Path(folder) / kind
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def evaluate_run_in_process(run, tmp, name: str, limit: int = 4) -> "Path":
    """`lamm-eval checkpoint=RUN benchmark=shapes_ppl` on `limit` generated samples, in this process (the
    console script is tested elsewhere); returns the synth data folder (its test images serve chat checks)."""
    from pathlib import Path

    from lamm.cli.eval import run as lamm_eval
    from lamm.config import compose
    from lamm.datasets.synth import generate

    tmp = Path(tmp)
    generate(tmp / "synth", sizes={"train": limit, "test": limit}, kinds=("shapes",), image_size=32)
    result = lamm_eval(compose("eval", ["benchmark=shapes_ppl", f"+benchmark.scenario.limit={limit}", "batch_size=2",
                                        f"checkpoint={run}", f"synth_root={tmp / 'synth'}",
                                        f"output_dir={tmp / 'eval'}", f"model.name={name}"]))
    assert result["n"] == limit and (tmp / "eval" / name / "shapes_ppl" / "results.json").is_file()
    return tmp / "synth"
