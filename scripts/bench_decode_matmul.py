"""The matmuls of one decode step: a few rows times many weights that are not in cache, MKL vs oneDNN.

    .venv/bin/python -P scripts/bench_decode_matmul.py             # 4 rows, 150 weights of 1536 x 576 fp32
    .venv/bin/python -P scripts/bench_decode_matmul.py --rows 16

150 distinct 1536 x 576 weights (530 MB, about SmolLM2-135M's linears) are multiplied by the same few rows,
as one decoding step does, with `F.linear` (MKL) and with oneDNN's linear on the same plain weights
(`lamm.llm.onednn_linear`); the two alternate over `--rounds` rounds. Also prints how fast a plain sum reads
the same bytes (the memory-bandwidth bound) and the largest difference between the two results.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--weights", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from torch import nn

    from lamm.llm.onednn_linear import available, onednn_linears

    if not available():
        raise SystemExit("this torch has no oneDNN")
    torch.set_num_threads(args.threads)
    layers = nn.ModuleList(nn.Linear(576, 1536, bias=False) for _ in range(args.weights)).requires_grad_(False)
    x = torch.randn(args.rows, 576)
    total = sum(layer.weight.nbytes for layer in layers)

    def run() -> list[torch.Tensor]:
        return [layer(x) for layer in layers]

    times: dict[str, list[float]] = {"MKL (F.linear)": [], "oneDNN": [], "sum of the weights": []}
    with torch.no_grad():
        mkl = run()
        with onednn_linears(layers):
            dnn = run()
        for r in range(args.rounds):
            order = list(times) if r % 2 == 0 else list(times)[::-1]
            for name in order:
                t = time.perf_counter()
                if name == "oneDNN":
                    with onednn_linears(layers):
                        run()
                elif name.startswith("MKL"):
                    run()
                else:
                    for layer in layers:
                        layer.weight.sum()
                times[name].append(time.perf_counter() - t)
    print(f"{args.rows} rows x {args.weights} weights 1536x576 fp32 ({total / 1e6:.0f} MB), {args.threads} threads, "
          f"{args.rounds} interleaved rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:20s} median {1e3 * med:7.1f} ms ({total / med / 1e9:5.1f} GB/s), "
              f"min {1e3 * min(ts):.1f} max {1e3 * max(ts):.1f}")
    diff = max(float((a - b).abs().max()) for a, b in zip(mkl, dnn))
    scale = max(float(a.abs().max()) for a in mkl)
    print(f"largest |MKL - oneDNN| {diff:.2e} (outputs up to {scale:.1f}): same products, another summation order")


if __name__ == "__main__":
    main()
