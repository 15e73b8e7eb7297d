"""Test-wide fixtures (tiny configurations live in lamm.testing)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are overhead-bound: one thread is faster, and immune to oversubscribed shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    """The tiny BPE tokenizer with lamm's media tokens."""
    from lamm.llm.tiny import tiny_tokenizer
    from lamm.tokens import add_media_tokens

    t = tiny_tokenizer()
    add_media_tokens(t)
    return t


@pytest.fixture(scope="module")
def model():
    """A tiny random prefix-fusion model in eval mode."""
    from lamm.build import build_model
    from lamm.testing import tiny_model_config

    torch.manual_seed(0)
    return build_model(tiny_model_config()).eval()


OPEN_FLAMINGO_WHEEL = "open-flamingo==2.0.1"
UNREACHABLE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
               "No matching distribution found for open-flamingo")


@pytest.fixture(scope="session")
def open_flamingo(tmp_path_factory):
    """OpenFlamingo's own code, the reference for its importers: the PyPI wheel installed with
    `--no-deps` into a temporary folder (never vendored), once per session; skipped without PyPI."""
    import subprocess
    import sys

    target = tmp_path_factory.mktemp("open_flamingo_wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                             OPEN_FLAMINGO_WHEEL, "einops", "einops-exts"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        if any(s in result.stderr for s in UNREACHABLE):
            pytest.skip(f"PyPI is unreachable, cannot install {OPEN_FLAMINGO_WHEEL}: "
                        f"{result.stderr.strip().splitlines()[-1]}")
        raise AssertionError(result.stderr[-2000:])
    sys.path.append(str(target))  # appended: the venv's own packages keep precedence
    import open_flamingo

    return open_flamingo
