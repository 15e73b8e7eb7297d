"""Training tokens/s with multimodal packing (`data.packing`) and length-grouped batching
(`data.group_by_length`) against plain padded batches, on the built-in data's length distribution;
and the packed loss against the unpacked loss on the same samples (fp32).

    .venv/bin/python -P scripts/bench_packing.py                              # shared config, 5 rounds
    .venv/bin/python -P scripts/bench_packing.py --llm tiny_random --rounds 9  # no download, quick
    .venv/bin/python -P scripts/bench_packing.py --kind digits --fusion gated_xattn
    .venv/bin/python -P scripts/bench_packing.py --llm tiny_random --padding-only 400   # padding only, no timing

Model: the LLM (default the real SmolLM2-135M) frozen + LoRA r8 on q,v, ViT w384 x6 p32 @224 frozen,
mlp projector and prefix fusion (or gated_xattn with a perceiver), fp32, 2 threads. Data: the built-in
LAMM-format data (`lamm synth`), tokenised by the run's own processor (chat template, labels on the
answers). Each round takes the next `--window` x `--batch` samples of a seeded shuffle and trains on them
three ways, alternating within the round: padded batches in sampler order, padded batches of similar
length (group_by_length), and each batch packed into rows of `--max-length`. tokens/s counts real
(non-padding) tokens; the figure is the median of the per-round ratios with their min and max.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lamm.build import build_model
from lamm.datasets import build_collator, build_dataset
from lamm.datasets.packing import PackingCollator
from lamm.datasets.synth import generate


def build(args):
    torch.manual_seed(0)
    llm = {"name": args.llm} if args.llm != "tiny_random" else {"name": "tiny_random", "hidden_size": 576,
                                                               "num_layers": 8, "num_heads": 9, "num_kv_heads": 3}
    projector = {"name": "mlp"} if args.fusion == "prefix" else {"name": "perceiver", "num_latents": 64, "depth": 2}
    fusion = {"name": "prefix"} if args.fusion == "prefix" else {"name": "gated_xattn", "every": 2}
    cfg = {
        "llm": llm,
        "encoder": {"name": "small_vit", "image_size": 224, "patch_size": 32, "width": 384, "depth": 6, "heads": 6},
        "projector": projector, "fusion": fusion,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "v_proj"]},
        "policy": {"encoder": "frozen", "projector": "full", "fusion": "full", "llm": "lora", "media_tokens": "full"},
    }
    model = build_model(cfg)
    model.train()
    model.encoders.eval()
    return model


def padding_only(args, model, dataset, order) -> None:
    from lamm.datasets.processor import ProcessedSample

    samples = []
    for i in order:
        tok = dataset.processor.tokenize(dataset.samples[i])
        samples.append(ProcessedSample(str(i), torch.tensor(tok.input_ids), torch.tensor(tok.labels), {}))
    lengths = [len(s.input_ids) for s in samples]
    print(f"{len(samples)} samples, lengths min {min(lengths)} median {statistics.median(lengths)} "
          f"mean {sum(lengths) / len(lengths):.1f} max {max(lengths)}; {args.batch} samples/step, "
          f"group_by_length windows of {args.window} steps")
    collate = build_collator(model.tokenizer)
    span = args.window * args.batch
    samples = samples[:len(samples) // span * span]
    real = sum(len(s.input_ids) for s in samples)
    padded = grouped = 0
    packed = {256: 0, 512: 0, 1024: 0}
    for w in range(0, len(samples), span):
        chunk = samples[w:w + span]
        by_length = sorted(chunk, key=lambda s: -len(s.input_ids))
        for i in range(0, span, args.batch):
            padded += collate(chunk[i:i + args.batch]).attention_mask.numel()
            grouped += collate(by_length[i:i + args.batch]).attention_mask.numel()
            for cap in packed:
                packed[cap] += PackingCollator(collate.pad_token_id, cap)(chunk[i:i + args.batch]).attention_mask.numel()
    print(f"positions computed per real token: padded {padded / real:.3f}, group_by_length {grouped / real:.3f}, "
          + ", ".join(f"packed <= {cap} {v / real:.3f}" for cap, v in packed.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="smollm2_135m")
    parser.add_argument("--fusion", default="prefix", choices=["prefix", "gated_xattn"])
    parser.add_argument("--kind", default="shapes", choices=["shapes", "digits"], help="built-in image data kind")
    parser.add_argument("--batch", type=int, default=8, help="samples per step (the same in all three ways)")
    parser.add_argument("--window", type=int, default=4, help="steps per round")
    parser.add_argument("--max-length", type=int, default=512, help="packed row length")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--padding-only", type=int, metavar="N", default=0,
                        help="no timing: positions computed per real token over N samples (tokenised only), "
                             "for packed row lengths 256, 512, 1024 (the ceiling of any tokens/s gain)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args)
    n = args.padding_only or args.rounds * args.window * args.batch + args.batch
    data_dir = Path(tempfile.mkdtemp(prefix="bench_packing_"))
    generate(data_dir, seed=0, sizes={"train": n, "test": 1}, kinds=[args.kind])
    data = {"name": "lamm", "path": str(data_dir / args.kind / "train.json"), "template": "chat",
            "system_prompt": "empty", "max_length": args.max_length}
    dataset = build_dataset(data, model.media_specs(), model.tokenizer, model.fusion.layout)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    if args.padding_only:
        padding_only(args, model, dataset, order)
        return
    samples = [dataset[i] for i in order]
    print(f"{len(samples)} samples processed", flush=True)
    lengths = [len(s.input_ids) for s in samples]
    collate = build_collator(model.tokenizer)
    pack = PackingCollator(collate.pad_token_id, args.max_length)

    # Same samples, fp32: packed loss == unpacked loss.
    with torch.no_grad():
        first = samples[:args.batch]
        loss_plain, loss_packed = model(collate(first), logits="none").loss, model(pack(first), logits="none").loss
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def run(batches) -> float:
        tokens, start = 0, time.perf_counter()
        for batch in batches:
            tokens += int(batch.attention_mask.sum())
            model(batch, logits="none").loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return tokens / (time.perf_counter() - start)

    run([collate(samples[:args.batch]), pack(samples[:args.batch])])  # warm-up
    rates = {"padded": [], "group_by_length": [], "packed": []}
    padding = {"padded": [], "group_by_length": [], "packed": []}
    for r in range(args.rounds):
        chunk = samples[args.batch + r * args.window * args.batch:][:args.window * args.batch]
        batches = [chunk[i:i + args.batch] for i in range(0, len(chunk), args.batch)]
        by_length = sorted(chunk, key=lambda s: -len(s.input_ids))
        grouped = [by_length[i:i + args.batch] for i in range(0, len(by_length), args.batch)]
        ways = {"padded": [collate(b) for b in batches], "group_by_length": [collate(b) for b in grouped],
                "packed": [pack(b) for b in batches]}
        for name, built in ways.items():
            padding[name].append(sum(b.attention_mask.numel() for b in built) / sum(int(b.attention_mask.sum()) for b in built))
            rates[name].append(run(built))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} tokens/s" for k, v in rates.items()), flush=True)
    ratio = {k: [a / b for a, b in zip(rates[k], rates["padded"])] for k in ("packed", "group_by_length")}
    result = {
        "config": vars(args),
        "lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
                    "mean": sum(lengths) / len(lengths)},
        "loss_unpacked": loss_plain.item(), "loss_packed": loss_packed.item(),
        "loss_abs_diff": abs(loss_plain.item() - loss_packed.item()),
        "tokens_per_s_median": {k: statistics.median(v) for k, v in rates.items()},
        "computed_per_real_token": {k: statistics.mean(v) for k, v in padding.items()},
        "speedup": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in ratio.items()},
    }
    print(f"{args.llm} frozen + LoRA r8 q,v, ViT w384 x6 p32 frozen, {args.fusion}, fp32, {args.threads} threads; "
          f"built-in {args.kind} data, {args.batch} samples/step, packed rows <= {args.max_length}, "
          f"{args.rounds} rounds x {args.window} steps per way, interleaved")
    ls = result["lengths"]
    print(f"sample lengths: min {ls['min']} median {ls['median']} mean {ls['mean']:.1f} max {ls['max']}")
    print(f"loss unpacked {result['loss_unpacked']:.7f}  packed {result['loss_packed']:.7f}  "
          f"|diff| {result['loss_abs_diff']:.2e}")
    for k in rates:
        line = f"{k:16s} {result['tokens_per_s_median'][k]:8.1f} tokens/s  computed/real tokens {result['computed_per_real_token'][k]:.2f}"
        if k in ratio:
            s = result["speedup"][k]
            line += f"  vs padded {s['median']:.2f}x (min {s['min']:.2f}, max {s['max']:.2f})"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
