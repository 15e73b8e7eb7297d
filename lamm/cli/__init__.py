"""Command-line entry points: `lamm`, `lamm-train`, `lamm-eval`.

Importing this package sets OMP_WAIT_POLICY=PASSIVE unless the user chose a policy: on a few
shared cores (data-loader workers, other jobs) OpenMP's default busy-waiting made CPU steps
10-30x slower in measurements here (scripts/bench_train.py), while costing little when idle.
It must happen before torch is imported, which the entry points do lazily.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
