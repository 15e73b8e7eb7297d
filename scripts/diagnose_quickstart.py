"""Where the quickstart loses shape and count: linear probes on a trained run's encoder, and the same
from-scratch CNN trained alone with linear heads on the same images (outside the test suite).

    .venv/bin/python -P scripts/diagnose_quickstart.py probe runs/quickstart-prefix/<time>
    .venv/bin/python -P scripts/diagnose_quickstart.py standalone --lr 1e-3 3e-4
    .venv/bin/python -P scripts/diagnose_quickstart.py warmup --steps 300 1000

`probe`: logistic regression from the encoder's tokens (eval mode, the run's BatchNorm statistics) on
training images to the held-out images: shape on every image, count on count scenes only (other
scenes hold one shape and would inflate it). Compare with the run's eval/shapes_ppl table: the gap is
what the LLM does not read. `standalone`: the quickstart's small_cnn + one linear head per question
on its max-pooled token, one pass over steps x batch training images (the quickstart's budget),
AdamW with the quickstart's warmup + cosine; prints held-out accuracy per question. `warmup`: the
quickstart's encoder warm-up phase alone (lamm/training/encoder_warmup.py: the same model, data stream,
heads, optimizer groups and schedule; fp32, no autocast), then the held-out accuracy of its answer-word head, each question scored
over its options (an option's score: the mean logit of its token buckets).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lamm.datasets.synth.shapes import SHAPES, SIDES

TASKS = ("colour", "shape", "count", "position")  # the quickstart's data.tasks


def _records(root: Path, split: str, limit: int) -> list[dict]:
    recs = [r for r in json.loads((root / f"{split}.json").read_text()) if r["task"] in TASKS]
    return recs[:limit]


def _labels(recs: list[dict]) -> dict[str, np.ndarray]:
    """Per question: the label of each record, -1 where the scene does not answer it."""
    objs = [r["meta"]["objects"] for r in recs]
    return {
        "shape": np.array([SHAPES.index(o[0]["shape"]) for o in objs]),
        "count": np.array([len(o) - 1 if r["task"] == "count" else -1 for o, r in zip(objs, recs)]),
        "position": np.array([SIDES.index(o[0]["side"]) if "side" in o[0] else -1 for o in objs]),
    }


def _images(root: Path, recs: list[dict], transform) -> torch.Tensor:
    return torch.stack([transform(Image.open(root / r["image"]).convert("RGB")) for r in recs])


def probe(run: str, data: Path, n_train: int) -> None:
    from sklearn.linear_model import LogisticRegression

    from lamm.training.export import load_for_inference

    model, _ = load_for_inference(run)
    enc = model.encoders["image"]
    splits = {}
    for split, n in (("train", n_train), ("test", 10**9)):
        recs = _records(data, split, n)
        with torch.no_grad():
            x = _images(data, recs, enc.transform)
            tokens = torch.cat([enc(x[i:i + 64]).float() for i in range(0, len(x), 64)])
        splits[split] = (tokens, _labels(recs))
    grid = enc.grid * enc.grid  # small_cnn: the grid tokens come first, the pooled ones last
    views = {"last token (pooled)": lambda t: t[:, -1], "grid mean": lambda t: t[:, :grid].mean(1),
             "grid, flattened": lambda t: t[:, :grid].flatten(1)}
    (tr, ytr), (te, yte) = splits["train"], splits["test"]
    for view, f in views.items():
        a, b = f(tr).numpy(), f(te).numpy()
        mu, sd = a.mean(0), a.std(0) + 1e-6
        for task in ("shape", "count"):
            k, k2 = ytr[task] >= 0, yte[task] >= 0
            clf = LogisticRegression(max_iter=2000).fit(((a - mu) / sd)[k], ytr[task][k])
            acc = clf.score(((b - mu) / sd)[k2], yte[task][k2])
            print(f"{view:22s} {task:6s} {100 * acc:5.1f}%  ({k.sum()} training images, {k2.sum()} held out)")


def standalone(data: Path, lrs: list[float], steps: int, batch: int, seed: int, save: Path | None = None) -> None:
    from lamm.encoders.small_cnn import SmallCNNEncoder
    from lamm.training.optim import warmup_cosine

    recs_tr, recs_te = _records(data, "train", steps * batch), _records(data, "test", 10**9)
    transform = SmallCNNEncoder(pooled_tokens=["max"]).transform
    xtr, xte = _images(data, recs_tr, transform), _images(data, recs_te, transform)
    ytr = {k: torch.as_tensor(v) for k, v in _labels(recs_tr).items()}
    yte = {k: torch.as_tensor(v) for k, v in _labels(recs_te).items()}
    for lr in lrs:
        torch.manual_seed(seed)
        enc = SmallCNNEncoder(pooled_tokens=["max"])
        heads = nn.ModuleDict({"shape": nn.Linear(enc.output_dim, len(SHAPES)),
                               "count": nn.Linear(enc.output_dim, 4), "position": nn.Linear(enc.output_dim, 2)})
        opt = torch.optim.AdamW([*enc.parameters(), *heads.parameters()], lr=lr, weight_decay=0.01)
        # The quickstart's schedule: 20 warmup steps, cosine down to 5%.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(20, steps, 0.05))
        start = time.perf_counter()
        for i in range(steps):
            rows = slice(i * batch, (i + 1) * batch)
            pooled = enc(xtr[rows])[:, -1]
            loss = sum(F.cross_entropy(h(pooled), ytr[k][rows], ignore_index=-1) for k, h in heads.items()
                       if bool((ytr[k][rows] >= 0).any()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        enc.eval()
        with torch.no_grad():
            pooled = enc(xte)[:, -1]
            accs = {k: (h(pooled[yte[k] >= 0]).argmax(1) == yte[k][yte[k] >= 0]).float().mean().item()
                    for k, h in heads.items()}
        shown = ", ".join(f"{k} {100 * v:.1f}%" for k, v in accs.items())
        print(f"standalone small_cnn, lr {lr:g}, {steps} x {batch} images: {shown} "
              f"({time.perf_counter() - start:.0f} s)")
        if save is not None:  # the encoder's weights, to start a quickstart from a CNN that already sees
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(save))
            print(f"wrote {save}")


def warmup(data: Path, steps_list: list[int], seed: int) -> None:
    from dataclasses import replace

    from lamm.build import build_model
    from lamm.cli.train import data_config
    from lamm.config import compose
    from lamm.training.datamodule import LammDataModule
    from lamm.training.encoder_warmup import EncoderWarmup, EncoderWarmupConfig
    from lamm.training.module import LammModule
    from lamm.training.optim import OptimConfig

    recs = _records(data, "test", 10**9)
    for steps in steps_list:
        torch.manual_seed(seed)
        cfg = compose("train", ["experiment=quickstart", f"seed={seed}"])
        model = build_model(cfg.model)
        # Training's own heads, optimizer groups and phased schedule, stopped where the warm-up ends.
        wcfg = replace(EncoderWarmupConfig.from_config(cfg.encoder_warmup), steps=steps)
        method = EncoderWarmup(model, wcfg, steps + 1)
        module = LammModule(model, OptimConfig.from_config(cfg.optim), steps + 1, methods=[method])
        setup = module.configure_optimizers()
        opt, sched, heads = setup["optimizer"], setup["lr_scheduler"]["scheduler"], method.heads
        dm = LammDataModule(data_config(cfg), model, steps)
        dm.setup()
        model.train()
        start = time.perf_counter()
        for _, batch in zip(range(steps), dm.train_dataloader()):
            loss = heads.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        seconds = time.perf_counter() - start
        model.eval()
        enc = model.encoders["image"]
        with torch.no_grad():
            logits = heads.logits(model, "image", _images(data, recs, enc.transform))
        tok, hits = model.tokenizer, {}
        for rec, row in zip(recs, logits):
            scores = [row[[t % heads.buckets for t in tok.encode(o, add_special_tokens=False)]].mean() for o in rec["options"]]
            hits.setdefault(rec["task"], []).append(rec["options"][int(torch.stack(scores).argmax())] == rec["answer"])
        shown = ", ".join(f"{k} {100 * sum(v) / len(v):.1f}%" for k, v in sorted(hits.items()))
        print(f"encoder warm-up alone, {steps} x {cfg.data.batch_size} samples: final loss {loss.item():.3f}; "
              f"held-out answer-word head: {shown} ({seconds:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synth-0/shapes"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="linear probes on a trained run's encoder tokens")
    p.add_argument("run")
    p.add_argument("--train-images", type=int, default=3000)
    s = sub.add_parser("standalone", help="the CNN alone with linear heads, the quickstart's image budget")
    s.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-4])
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--save", type=Path, help="write the trained encoder's state dict here (safetensors; one --lr)")
    w = sub.add_parser("warmup", help="the quickstart's encoder warm-up alone, its head read out on held-out images")
    w.add_argument("--steps", type=int, nargs="+", default=[1000])
    w.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.data / "train.json").exists():
        parser.error(f"{args.data / 'train.json'} not found: run the quickstart once (it generates the data)")
    if args.command == "standalone" and args.save is not None and len(args.lr) != 1:
        parser.error("--save keeps one encoder: give a single --lr")
    if args.command == "probe":
        probe(args.run, args.data, args.train_images)
    elif args.command == "warmup":
        warmup(args.data, args.steps, args.seed)
    else:
        standalone(args.data, args.lr, args.steps, args.batch, args.seed, args.save)


if __name__ == "__main__":
    main()
