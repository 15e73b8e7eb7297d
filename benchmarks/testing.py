"""Helpers for testing evaluations in several processes (a spawned worker must be importable)."""
from __future__ import annotations

import json
import os
from typing import Any


def distributed_eval_worker(rank: int, world: int, port: int, model_cfg: dict, recipe: dict, out: str,
                            batch_size: int = 4, seed: int = 0) -> None:
    """One rank: join a gloo group, build the model (seeded), evaluate, write its returned results."""
    import torch

    from lamm.benchmarks.evaluator import evaluate
    from lamm.build import build_model

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        model = build_model(model_cfg).eval()
        res: Any = evaluate(model, recipe, out, batch_size=batch_size)
        with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as fh:
            json.dump(res, fh)
        torch.distributed.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        torch.distributed.destroy_process_group()
