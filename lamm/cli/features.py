"""`lamm cache-features <lamm-train overrides>`: a frozen encoder's outputs for every training medium, computed once.

    lamm cache-features model/policy=align data.feature_cache=feats      # then:
    lamm-train model/policy=align data.feature_cache=feats                # reads feats/, runs no encoder

The folder comes from `--out` or from the overrides' `data.feature_cache`. A second call adds only
media that are new or changed; a folder built by another encoder, weights or transform is refused.
"""
from __future__ import annotations

import argparse
import time


def _cache_features(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lamm.build import build_model
    from lamm.cli.train import data_config
    from lamm.config import compose
    from lamm.datasets import build_dataset
    from lamm.datasets.feature_cache import build_cache, media_references

    cfg = compose("train", args.overrides)
    out = args.out or cfg.data.get("feature_cache")
    if not out:
        raise ValueError("lamm cache-features: give the cache folder as --out DIR or data.feature_cache=DIR")
    data = data_config(cfg)
    data["feature_cache"] = None  # the dataset reads media here; the cache is what this command writes
    _seed(int(cfg.seed))  # as lamm-train does before building: a randomly initialised encoder matches too
    model = build_model(cfg.model)
    if cfg.get("init_from"):
        from lamm.training.export import init_from_run

        init_from_run(model, cfg.init_from)
    if model.policy.encoder != "frozen":
        raise ValueError(f"lamm cache-features: model.policy.encoder={model.policy.encoder} trains the encoder, so its "
                         "features change every step; cache a frozen encoder (e.g. model/policy=align)")
    dataset = build_dataset(data, model.media_specs(), model.tokenizer, model.fusion.layout)
    references = list(media_references(dataset))
    used = {ref.modality for _, ref in references}
    start = time.perf_counter()
    reports = build_cache(out, references, {m: e for m, e in model.encoders.items() if m in used},
                          batch_size=args.batch_size)
    console = Console(soft_wrap=True)  # paths stay whole when piped
    for r in reports:
        console.print(f"{r.modality}: {r.media} media, {r.computed} computed now, {r.media - r.computed} already cached")
    console.print(f"feature cache {out} ready in {time.perf_counter() - start:.1f}s; train with the same overrides "
                  f"and data.feature_cache={out}")
    return 0


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cache-features", help="compute a frozen encoder's features once (data.feature_cache)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="the lamm-train overrides of the run (model, data, init_from)")
    parser.add_argument("--out", help="cache folder (default: data.feature_cache of the overrides)")
    parser.add_argument("--batch-size", type=int, default=32, help="media per encoder call")
    parser.set_defaults(func=_cache_features)
