"""Few-shot evaluation throughput at 0, 4 and 16 shots (OpenFlamingo prompts, random demonstrations), with
and without the shared-prefix cache, in interleaved rounds.

    /work/main/.venv/bin/python -P scripts/bench_fewshot.py                # the quickstart model (SmolLM2-135M, prefix)
    /work/main/.venv/bin/python -P scripts/bench_fewshot.py --tiny         # tiny random model (smoke test)

What is shared. Demonstrations are drawn per sample (OpenFlamingo's protocol; RICES is per sample by
construction), so two samples almost never have the same demonstrations and there is no prefix to
share *across samples*. What every sample's prompt -- demonstrations and query -- is shared by is its
candidates when classes are ranked (ImageNet's, Hateful Memes' yes/no): with the cache the prompt is run
once and each class continues from its KV cache (`MultimodalLM.loglikelihood(share_prompt_cache=True)`,
the ppl inferencer's default); without it every (prompt + class) row runs in full. Fusions that cannot
share the cache (gated cross-attention) always run full rows; the script says which it measured.

Per round, every configuration is timed once, in the same order (rounds interleave, so drift in a
shared machine's load hits all of them alike); the table gives the median samples/s over rounds and,
for each ratio, the median of the per-round ratios with their min-max spread. Generation decodes a
fixed number of tokens (EOS disabled) so every shot count decodes the same amount.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="samples per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shots", default="0,4,16", help="comma-separated shot counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=8, help="generated tokens per caption")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the real config")
    parser.add_argument("overrides", nargs="*", default=["experiment=quickstart"],
                        help="overrides for lamm's train config (default: experiment=quickstart)")
    args = parser.parse_args()

    import torch

    from lamm.benchmarks.build import build_scenario
    from lamm.benchmarks.fewshot import FewShot
    from lamm.benchmarks.inferencers import PPLInference, generate_texts
    from lamm.benchmarks.render import Renderer
    from lamm.datasets.synth import generate
    from lamm.testing import benchmark_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = benchmark_model(args.tiny, args.overrides)
    shares = model.fusion.shares_prompt_cache
    print(f"model built in {time.perf_counter() - t0:.1f} s; llm={model.llm.name} ({model.llm.causal_lm.dtype}) "
          f"fusion={type(model.fusion).__name__} threads={torch.get_num_threads()} "
          f"shares prompt cache: {'yes' if shares else 'no (both ranking columns run full rows)'}")
    shot_counts = [int(k) for k in args.shots.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, seed=0, sizes={"train": 16 * max(shot_counts) + 16, "test": 8 * args.n}, kinds=("shapes",))
        scen = {"caption": build_scenario({"name": "synth_shapes", "root": tmp, "tasks": ["caption"], "limit": args.n}),
                "classification": build_scenario({"name": "synth_shapes", "root": tmp, "tasks": ["colour"],
                                                  "limit": args.n})}
        work = {}  # (shots, kind) -> (samples, queries, renderer)
        for k in shot_counts:
            for kind, s in scen.items():
                inst = FewShot(shots=k, prompt=kind, format="openflamingo")
                inst.prepare(s, model)
                samples = s.samples()
                renderer = Renderer(model, template=inst.template)
                renderer.eos_ids = [-1]  # fixed-length decoding
                work[(k, kind)] = (samples, [inst.query(x) for x in samples], renderer)
        bs = args.batch_size

        def run(k: int, what: str) -> float:
            kind = "caption" if what == "generate" else "classification"
            samples, queries, renderer = work[(k, kind)]
            t = time.perf_counter()
            for i in range(0, len(samples), bs):
                if what == "generate":
                    items = [(x.id, q, [], None) for x, q in zip(samples[i:i + bs], queries[i:i + bs])]
                    generate_texts(model, renderer, items, args.new_tokens)
                else:
                    PPLInference(max_rows=64, length_norm=True, shared_prefix=what == "rank_cached")(
                        model, samples[i:i + bs], queries[i:i + bs], renderer)
            return len(samples) / (time.perf_counter() - t)

        configs = [(k, what) for k in shot_counts for what in ("generate", "rank_cached", "rank_full")]
        with torch.no_grad():
            run(shot_counts[0], "generate")  # warm-up
            run(shot_counts[0], "rank_cached")
            rounds: list[dict] = []
            for r in range(args.rounds):
                rounds.append({c: run(*c) for c in configs})
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k}-shot {w} {v:.2f}/s" for (k, w), v in rounds[-1].items()))

    def med(c) -> float:
        return statistics.median(r[c] for r in rounds)

    def ratio(a, b) -> str:
        per = [r[a] / r[b] for r in rounds]
        return f"{statistics.median(per):.2f}x [{min(per):.2f}-{max(per):.2f}]"

    tokens = {k: sum(len(q.turns[0]) for q in work[(k, "classification")][1]) / args.n for k in shot_counts}
    base = shot_counts[0]
    print(f"\n{args.n} samples, batch {bs}, {args.rounds} interleaved rounds; generation {args.new_tokens} tokens; "
          f"ranking over {len(work[(base, 'classification')][0][0].options)} classes (mean log-likelihood)")
    print("samples/s: median over rounds; ratios: median of per-round ratios [min-max]")
    head = (f"{'shots':>5} {'prompt chars':>12} {'generate/s':>11} {'vs ' + str(base) + '-shot':>22} "
            f"{'rank cached/s':>14} {'rank full/s':>12} {'cache speed-up':>22}")
    print(head)
    for k in shot_counts:
        print(f"{k:>5} {tokens[k]:>12.0f} {med((k, 'generate')):>11.2f} {ratio((k, 'generate'), (base, 'generate')):>22} "
              f"{med((k, 'rank_cached')):>14.2f} {med((k, 'rank_full')):>12.2f} "
              f"{ratio((k, 'rank_cached'), (k, 'rank_full')):>22}")


if __name__ == "__main__":
    main()
