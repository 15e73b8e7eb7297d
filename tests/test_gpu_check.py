"""scripts/gpu_check.sh (FSDP and DeepSpeed ZeRO-3 on a real GPU): parses, and without a GPU says in one
line that it is skipped and succeeds, which is how CI runs it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_gpu_check_parses_and_is_skipped_in_one_line_without_a_gpu() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True).returncode == 0
    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU driver is present: run `bash scripts/gpu_check.sh` itself (it takes minutes)")
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "gpu_check: skipped: no CUDA GPU on this machine\n" and result.stderr == ""
