"""Start-up: the console scripts' --help imports no Lightning (Lightning and the torchmetrics/torchvision/
scipy it pulls in cost seconds per command; only training needs it). lamm-eval and lamm-chat on a trained run:
tests/test_chat.py. Times are measured by scripts/bench_startup.py, not here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Runs a console script's entry point in a fresh interpreter and reports which heavy packages it imported.
PROBE = """
import sys
from importlib.metadata import entry_points
sys.argv = [{name!r}, "--help"]
main = next(e for e in entry_points(group="console_scripts") if e.name == {name!r}).load()
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"lightning", "pytorch_lightning", "torchmetrics"}})
print("EXIT", code, "HEAVY", ",".join(heavy) or "-", file=sys.stderr)
"""


@pytest.mark.parametrize("name", ["lamm", "lamm-train", "lamm-eval", "lamm-chat"])
def test_help_imports_no_lightning(name: str) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE.format(name=name)], capture_output=True, text=True,
                            timeout=120, env=ENV)
    last = result.stderr.strip().splitlines()[-1]
    assert last == "EXIT 0 HEAVY -", result.stderr[-2000:]
    assert "usage" in result.stdout.lower() or name in result.stdout, result.stdout[:500]
