"""Evaluation throughput: batched direct generation and batched PPL option scoring vs a batch-size-1 loop,
measured in the same run on the same samples.

    /work/main/.venv/bin/python -P scripts/bench_eval.py                 # the quickstart model, as lamm-train builds it
    /work/main/.venv/bin/python -P scripts/bench_eval.py model/fusion=prefix # lamm-train's plain default (fp32 LLM)
    /work/main/.venv/bin/python -P scripts/bench_eval.py --tiny          # tiny random model (smoke test)

The quickstart model is real SmolLM2-135M + small_cnn + mlp + prefix; on a CPU with AMX its LLM
weights are bf16 (`${cpu_bf16:...}` in the recipe), elsewhere fp32.

Generation is timed at a fixed length (EOS disabled) so both paths decode the same number of tokens,
at each length of `--max-new-tokens` (default 8, 16 = the direct inferencer's default, 32): prompt
prefill costs about the same batched or not on a CPU, so the speed-up grows with the answer length.
The batched pass and the batch-size-1 loop alternate over `--rounds` rounds (the order flips every
round) so that load from other work on a shared CPU hits both alike; the table gives the median
speed-up and its spread over the rounds, and `--json` writes it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="samples per batched measurement")
    parser.add_argument("--n-single", type=int, default=16, help="samples for the batch-size-1 loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", default="8,16,32", help="comma-separated generation lengths")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the real config")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of batched pass + bs=1 loop")
    parser.add_argument("--json", default=None, help="write the table to this JSON file")
    parser.add_argument("overrides", nargs="*", default=["experiment=quickstart"],
                        help="overrides for lamm's train config (default: experiment=quickstart)")
    args = parser.parse_args()

    import torch

    from lamm.benchmarks.build import build_instruction, build_scenario
    from lamm.benchmarks.inferencers import PPLInference, generate_texts
    from lamm.benchmarks.render import Renderer
    from lamm.datasets.synth import generate
    from lamm.testing import benchmark_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = benchmark_model(args.tiny, args.overrides)
    print(f"model built in {time.perf_counter() - t0:.1f} s; llm={model.llm.name} ({model.llm.causal_lm.dtype}) "
          f"fusion={type(model.fusion).__name__} threads={torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, seed=0, sizes={"train": 4, "test": 2 * args.n}, kinds=("shapes",))
        samples = build_scenario({"name": "synth_shapes", "root": tmp,
                                  "tasks": ["colour", "shape", "count", "position"]}).samples()[: args.n]
        instr = build_instruction({"name": "standard"})
        queries = [instr.query(s) for s in samples]
        renderer = Renderer(model)
        renderer.eos_ids = [-1]  # fixed-length decoding for a fair comparison
        items = [(s.id, q, [], None) for s, q in zip(samples, queries)]
        bs = args.batch_size

        lengths = [int(n) for n in str(args.max_new_tokens).split(",")]

        def gen(chunk, new_tokens):
            generate_texts(model, renderer, chunk, new_tokens)

        def ppl(ss, qs):
            PPLInference(max_rows=bs * 8)(model, ss, qs, renderer)

        def timed(fn) -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        def compare(name, batched_fn, single_fn, n_batched, n_single):
            """Per round: samples/s batched and in the bs=1 loop, alternating which runs first."""
            b_rates, s_rates = [], []
            for r in range(args.rounds):
                order = [("b", batched_fn), ("s", single_fn)]
                for kind, fn in (order if r % 2 == 0 else order[::-1]):
                    dt = timed(fn)
                    (b_rates if kind == "b" else s_rates).append((n_batched if kind == "b" else n_single) / dt)
            ratios = [b / s for b, s in zip(b_rates, s_rates)]
            rows.append({"inference": name, "batched_samples_per_s": statistics.median(b_rates),
                         "single_samples_per_s": statistics.median(s_rates), "speedup": statistics.median(ratios),
                         "speedup_min": min(ratios), "speedup_max": max(ratios), "rounds": args.rounds})

        rows: list[dict] = []
        with torch.no_grad():
            gen(items[:2], 2)  # warm-up
            gen(items[:1], 2)
            ppl(samples[:2], queries[:2])
            for new_tokens in lengths:
                compare(f"direct, {new_tokens} new tokens",
                        lambda n=new_tokens: [gen(items[i:i + bs], n) for i in range(0, len(items), bs)],
                        lambda n=new_tokens: [gen([it], n) for it in items[: args.n_single]],
                        len(items), args.n_single)
            compare("PPL option scoring",
                    lambda: [ppl(samples[i:i + bs], queries[i:i + bs]) for i in range(0, len(samples), bs)],
                    lambda: [ppl([s], [q]) for s, q in zip(samples[: args.n_single], queries[: args.n_single])],
                    len(samples), args.n_single)

    opts = sum(len(q.labels) for q in queries) / len(queries)
    print(f"\n{len(samples)} samples (batched), {args.n_single} (batch-size-1 loop); batch {bs}; "
          f"{opts:.1f} options per sample; {args.rounds} interleaved rounds, medians")
    print(f"{'inference':<26}{'batched samples/s':>20}{'bs=1 samples/s':>18}{'speed-up':>10}{'spread':>14}")
    for row in rows:
        print(f"{row['inference']:<26}{row['batched_samples_per_s']:>20.2f}{row['single_samples_per_s']:>18.2f}"
              f"{row['speedup']:>9.1f}x{row['speedup_min']:>8.1f}..{row['speedup_max']:.1f}")
    if args.json:
        config = {"llm": model.llm.name, "dtype": str(model.llm.causal_lm.dtype), "fusion": type(model.fusion).__name__,
                  "threads": torch.get_num_threads(), "batch_size": bs, "n": args.n, "n_single": args.n_single,
                  "overrides": args.overrides, "tiny": args.tiny}
        Path(args.json).write_text(json.dumps({"config": config, "rows": rows}, indent=1))
        print(f"written {args.json}")

if __name__ == "__main__":
    main()
