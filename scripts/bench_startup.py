"""Start-up time of the console scripts: `--help` of lamm, lamm-train, lamm-eval and lamm-chat.

The commands are interleaved round by round (A B C D, A B C D, ...) so machine drift hits all alike;
the table gives each one's median wall time and its spread (min-max) over the rounds. Target: <= 2 s.

    .venv/bin/python scripts/bench_startup.py --rounds 7
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {"lamm --help": ["lamm", "--help"], "lamm-train --help": ["lamm-train", "--help"],
            "lamm-eval --help": ["lamm-eval", "--help"], "lamm-chat --help": ["lamm-chat", "--help"]}
TARGET_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    print(f"{'command':<20} {'median s':>9} {'min-max s':>12}  <= {TARGET_S} s")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:>9.2f} {min(values):>5.2f}-{max(values):<6.2f}  {'yes' if median <= TARGET_S else 'NO'}")


if __name__ == "__main__":
    main()
