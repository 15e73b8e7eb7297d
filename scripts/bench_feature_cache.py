"""A LLaVA-stage-1-shaped training step (frozen ViT, frozen LLM, trained projector; or OpenFlamingo-shaped with
--fusion gated_xattn: perceiver and gated cross-attention trained) with and without the
frozen-feature cache (`data.feature_cache`): same loss, step time side by side.

    .venv/bin/python -P scripts/bench_feature_cache.py                       # shared config, 7 rounds
    .venv/bin/python -P scripts/bench_feature_cache.py --vit-width 768 --vit-depth 12 --patch 16
    .venv/bin/python -P scripts/bench_feature_cache.py --llm tiny_random      # no download
    .venv/bin/python -P scripts/bench_feature_cache.py --fusion gated_xattn --vit-width 768 --vit-depth 12 --patch 16

Step = forward + backward + AdamW over the trained parts. "tower" runs the frozen encoder on the pixels
each step (as training without a cache does); "cache" reads the same encoder outputs from a
MediaBatch(encoded=True), as the data pipeline hands them over with data.feature_cache. The two
steps alternate round by round (A B A B ...), so load from other work on the shared CPU hits both;
the figure is the median of the per-round ratios, with their min and max.
Batch: 4 samples x 128 LLM positions, one image each, labels on the second half (the response part).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lamm.batch import IGNORE_INDEX, Batch, MediaBatch
from lamm.build import build_model


def build(args):
    torch.manual_seed(0)
    llm = {"name": args.llm} if args.llm != "tiny_random" else {"name": "tiny_random", "hidden_size": 576,
                                                               "num_layers": 8, "num_heads": 9, "num_kv_heads": 3}
    cfg = {
        "llm": llm,
        "encoder": {"name": "small_vit", "image_size": args.image_size, "patch_size": args.patch,
                    "width": args.vit_width, "depth": args.vit_depth, "heads": args.vit_width // 64},
        "projector": {"name": "mlp"} if args.fusion == "prefix" else {"name": "perceiver", "num_latents": 64, "depth": 2},
        "fusion": {"name": args.fusion} if args.fusion == "prefix" else {"name": "gated_xattn", "every": 2},
        "policy": {"encoder": "frozen", "projector": "full", "fusion": "full", "llm": "frozen", "media_tokens": "full"},
    }
    model = build_model(cfg)
    model.train()
    model.encoders.eval()  # frozen encoders run in eval mode in training too (LammModule.train)
    return model


def batch_for(model, batch_size: int, positions: int) -> Batch:
    tok = model.tokenizer
    placeholders = tok(model.placeholder_text("image"), add_special_tokens=False).input_ids
    high = min(len(tok), 49152) - 100  # ordinary vocabulary, no special tokens
    text = torch.randint(min(100, high - 1), high, (batch_size, positions - len(placeholders)))
    ids = torch.cat([torch.tensor(placeholders).expand(batch_size, -1), text], 1)
    labels = ids.clone()
    labels[:, : positions // 2] = IGNORE_INDEX
    pixels = torch.randn(batch_size, 3, model.encoders["image"].image_size, model.encoders["image"].image_size)
    return Batch(ids, torch.ones_like(ids), labels, {"image": MediaBatch(pixels, torch.arange(batch_size))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="smollm2_135m")
    parser.add_argument("--fusion", default="prefix", choices=["prefix", "gated_xattn"],
                        help="prefix: LLaVA (mlp projector); gated_xattn: OpenFlamingo (perceiver, gated cross-attention)")
    parser.add_argument("--vit-width", type=int, default=384)
    parser.add_argument("--vit-depth", type=int, default=6)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args)
    plain = batch_for(model, args.batch, args.positions)
    with torch.inference_mode():
        features = model.encoders["image"](plain.media["image"].data)
    cached = Batch(plain.input_ids, plain.attention_mask, plain.labels,
                   {"image": MediaBatch(features.clone(), plain.media["image"].sample_index, encoded=True)})
    with torch.no_grad():
        loss_tower, loss_cache = model(plain, logits="none").loss, model(cached, logits="none").loss
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(batch: Batch) -> float:
        start = time.perf_counter()
        loss = model(batch, logits="none").loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(plain), step(cached)  # warm-up
    times = {"tower": [], "cache": []}
    for _ in range(args.rounds):
        times["tower"].append(step(plain))
        times["cache"].append(step(cached))
    ratios = [t / c for t, c in zip(times["tower"], times["cache"])]
    result = {
        "config": vars(args),
        "loss_tower": loss_tower.item(), "loss_cache": loss_cache.item(),
        "identical_loss": bool(torch.equal(loss_tower, loss_cache)),
        "step_s_tower_median": statistics.median(times["tower"]), "step_s_cache_median": statistics.median(times["cache"]),
        "speedup_median": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
    }
    print(f"stage-1-shaped step ({args.fusion}), {args.llm} frozen, ViT w{args.vit_width} x{args.vit_depth} p{args.patch} "
          f"@{args.image_size} frozen, projector + fusion trained, batch {args.batch} x {args.positions}, fp32, "
          f"{args.threads} threads, {args.rounds} interleaved rounds")
    print(f"loss tower {result['loss_tower']:.6f}  cache {result['loss_cache']:.6f}  identical: {result['identical_loss']}")
    print(f"step s (median)  tower {result['step_s_tower_median']:.3f}  cache {result['step_s_cache_median']:.3f}")
    print(f"speedup with cache: {result['speedup_median']:.2f}x (per-round min {result['speedup_min']:.2f}, "
          f"max {result['speedup_max']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
