"""Data-loading benchmark: is loading ever the bottleneck of quickstart training?

Measures, in one run and on the quickstart data (built-in shapes, LAMM format):
  1. loading: samples/s through the real pipeline (JSON -> PNG decode -> encoder transform ->
     tokenise -> collate) with a DataLoader of 2 workers;
  2. consumption: samples/s of a training step (forward + backward + AdamW step) of the quickstart
     model (real SmolLM2-135M + LoRA r=8 q,v, small_cnn trained, MLP projector);
and prints their ratio (target >= 10). Run: .venv/bin/python -P scripts/bench_data.py
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader


def loading_rate(dataset, collate, batch_size: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        shuffle=True, persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up is paid once per epoch, not per batch
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it))
    return n / (time.perf_counter() - start)


def consumption_rate(model, dataset, collate, batch_size: int, steps: int) -> float:
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters().values(), lr=1e-4)
    batches = [collate([dataset[i * batch_size + j] for j in range(batch_size)]) for i in range(steps + 1)]
    def step(batch):
        opt.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        opt.step()
    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load-batches", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--overrides", nargs="*", default=["model/policy=scratch"])
    args = parser.parse_args()

    from lamm.build import build_model
    from lamm.config import compose
    from lamm.datasets import build_collator, build_dataset
    from lamm.datasets.synth import generate

    torch.manual_seed(0)
    model = build_model(compose("train", args.overrides).model)
    with tempfile.TemporaryDirectory() as tmp:
        n = args.batch_size * (args.load_batches + 2)
        generate(tmp, seed=0, sizes={"train": n, "test": 8}, kinds=("shapes",))
        data = {"name": "lamm", "path": str(Path(tmp) / "shapes" / "train.json"), "template": "chat", "max_length": 256}
        dataset = build_dataset(data, model.media_specs(), model.tokenizer, model.fusion.layout)
        collate = build_collator(model.tokenizer, "right")
        load = loading_rate(dataset, collate, args.batch_size, args.workers, args.load_batches)
        train = consumption_rate(model, dataset, collate, args.batch_size, args.train_steps)
    print(f"loading     {load:8.1f} samples/s  ({args.workers} workers, batch {args.batch_size})")
    print(f"training    {train:8.1f} samples/s  (forward+backward+AdamW, {torch.get_num_threads()} threads)")
    print(f"ratio       {load / train:8.1f}x  (target >= 10: loading is never the bottleneck)")


if __name__ == "__main__":
    main()
