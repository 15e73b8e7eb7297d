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
