"""The `lamm synth` subcommand: `add_arguments(parser)` declares it, `run(args)` executes it."""
from __future__ import annotations

import argparse
import sys
import time


def _kinds(text: str) -> list[str]:
    from lamm.datasets.synth import KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(bad) or '(none)'}; choose from {','.join(KINDS)}")
    return kinds


def _sizes(text: str) -> dict[str, int]:
    from lamm.datasets.synth import parse_sizes

    try:
        return parse_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `--out`, `--seed`, `--size`, `--kinds`, `--image-size`, `--frames`, `--points`."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (manifest.json + one folder per kind)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> byte-identical files (default 0)")
    parser.add_argument(
        "--size", type=_sizes, default=None, metavar="SPLIT=N,...",
        help="questions per split, for every kind (train=2000,test=200) or one kind (shapes.train=500); "
             "default shapes 12000/400, video 600/100, points 600/100, digits 1400/397",
    )
    parser.add_argument(
        "--kinds", type=_kinds, default=["shapes", "video", "points", "digits"], metavar="KIND,...",
        help="comma-separated subset of shapes,video,points,digits (default: all)",
    )
    parser.add_argument("--image-size", type=int, default=64, help="image and video frame side in pixels (default 64)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video clip (default 8)")
    parser.add_argument("--points", type=int, default=1024, help="points per point cloud (default 1024)")


def run(args: argparse.Namespace) -> int:
    """Generate the built-in offline datasets (shapes, video, points, digits) in LAMM's JSON format."""
    from lamm.datasets.synth import generate

    start = time.perf_counter()
    try:
        manifest = generate(
            args.out, seed=args.seed, sizes=args.size, kinds=args.kinds,
            image_size=args.image_size, num_frames=args.frames, num_points=args.points,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"lamm synth: error: {exc}", file=sys.stderr)
        return 2
    for kind in args.kinds:
        entry = manifest["kinds"][kind]
        sizes = ", ".join(f"{s} {n}" for s, n in entry["sizes"].items())
        print(f"{kind:7s} {sizes:22s} tasks: {', '.join(entry['tasks'])}")
    print(f"wrote {args.out}/manifest.json in {time.perf_counter() - start:.1f} s")
    return 0
