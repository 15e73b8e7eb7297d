"""Fault injection for the reliability tests (a test hook; nothing sets it in normal use).

`LAMM_FAULT_INJECT=<point>[@<n>]` makes the n-th pass (default the first) of this process through
`<point>` act out a fault, so a test can kill a real `lamm-train` / `lamm-eval` at an exact place
inside a write. The points, each named where the writer calls `triggered`:

- `checkpoint.weights_partial`: SIGKILL with the new weights half written (lamm/training/checkpoint_io.py)
- `checkpoint.before_rename`: SIGKILL with the new checkpoint complete in `<name>.tmp`, nothing renamed
- `checkpoint.between_renames`: SIGKILL after the old checkpoint moved to `<name>.old`, before the new
  one took its name
- `checkpoint.enospc`: the weights write fails half way with OSError(ENOSPC), as on a full disk
- `samples.torn_line`: SIGKILL with half of a batch's records written to samples.jsonl, the last one
  cut mid-line (lamm/benchmarks/evaluator.py)

Every pass through a point counts, so `checkpoint.between_renames@2` hits the second checkpoint save
(the first had no old checkpoint to move).
"""
from __future__ import annotations

import os
import signal
from collections import Counter

FAULT_ENV = "LAMM_FAULT_INJECT"
_passes: Counter[str] = Counter()


def triggered(point: str) -> bool:
    """True when `LAMM_FAULT_INJECT` names `point` and this is the pass it asks for."""
    spec = os.environ.get(FAULT_ENV, "")
    name, _, nth = spec.partition("@")
    if name != point:
        return False
    _passes[point] += 1
    return _passes[point] == int(nth or 1)


def kill_self() -> None:
    """SIGKILL this process: no handler, no cleanup, no flush (what a power cut or OOM kill leaves)."""
    os.kill(os.getpid(), signal.SIGKILL)
