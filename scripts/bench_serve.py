"""lamm-serve throughput: requests/s with 8 clients at once against one client at a time, same server.

    .venv/bin/python scripts/bench_serve.py                      # a tiny untrained model
    .venv/bin/python scripts/bench_serve.py --rounds 7 --requests 32 --max-tokens 32
    .venv/bin/python scripts/bench_serve.py runs/quickstart-prefix/<time>

Rounds alternate sequential and concurrent (so a change in the machine's load hits both alike); each
round sends the same `--requests` chat completions (a text question with an image, greedy, a fixed
`max_tokens`) through the real `openai` client. Prints every round, then the median ratio and its spread.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="*", default=["model/llm=tiny_random"], help="lamm-serve's RUN or overrides")
    parser.add_argument("--rounds", type=int, default=5, help="pairs of (sequential, concurrent) rounds")
    parser.add_argument("--requests", type=int, default=24, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from openai import OpenAI

    from lamm.serve.launch import start_server

    rng = np.random.default_rng(0)
    uris = []
    for _ in range(4):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    requests = [[{"role": "user", "content": [{"type": "text", "text": f"Question {i}: what is shown?"},
                                              {"type": "image_url", "image_url": {"url": uris[i % 4]}}]}]
                for i in range(args.requests)]

    with tempfile.TemporaryDirectory() as tmp:
        server = start_server([*args.source, "--no-demo", "--max-batch", str(args.concurrency)], Path(tmp) / "server.log")
        try:
            client = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=600)
            model = client.models.list().data[0].id

            def batches() -> int:
                with urllib.request.urlopen(f"{server.url}/health") as response:
                    return json.loads(response.read())["batches"]

            def ask(messages) -> int:
                reply = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens)
                return reply.usage.completion_tokens

            ask(requests[0])  # warm-up
            pool = ThreadPoolExecutor(args.concurrency)
            ratios = []
            print(f"{model}: {args.requests} requests per round, max_tokens {args.max_tokens}")
            for r in range(args.rounds):
                start = time.perf_counter()
                tokens = sum(ask(m) for m in requests)
                sequential = args.requests / (time.perf_counter() - start)
                start, before = time.perf_counter(), batches()
                tokens_c = sum(pool.map(ask, requests))
                concurrent = args.requests / (time.perf_counter() - start)
                calls = batches() - before
                ratios.append(concurrent / sequential)
                print(f"round {r + 1}: sequential {sequential:.2f} req/s ({tokens} tokens), {args.concurrency} at once "
                      f"{concurrent:.2f} req/s ({tokens_c} tokens, {args.requests / calls:.1f} requests per generate call): "
                      f"{ratios[-1]:.2f}x")
            pool.shutdown()
        finally:
            server.stop()
    print(f"median {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x) "
          f"over {args.rounds} interleaved rounds")


if __name__ == "__main__":
    main()
