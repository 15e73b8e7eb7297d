"""Generation's fast path (static KV cache, oneDNN linears, no step after the last token) gives the plain
path's tokens."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lamm.build import build_model
from lamm.testing import media_text, random_media, text_batch, tiny_model_config


@pytest.fixture(scope="module")
def models():
    out = {}
    for fusion in ("prefix", "gated_xattn"):
        torch.manual_seed(0)
        model = build_model(tiny_model_config(fusion=fusion)).eval()
        if fusion == "gated_xattn":  # open gates so the media reach the text
            for block in model.fusion.blocks.values():
                nn.init.constant_(block.attn_gate, 0.8)
                nn.init.constant_(block.ff_gate, 0.4)
        out[fusion] = model
    return out


def _batch(model, padding_side: str):
    torch.manual_seed(1)
    images = random_media(model, "image", 3)
    ph = media_text(model, "image")
    texts = [f"Look at this {ph} then this {ph} and say which colour", f"One {ph} shape here"]
    return text_batch(model, texts, {"image": (images, [0, 0, 1])}, padding_side)


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_static_cache_gives_the_dynamic_caches_and_the_uncached_tokens(models, fusion: str) -> None:
    model = models[fusion]
    for side in ("left", "right"):
        batch = _batch(model, side)
        static = model.generate(batch, max_new_tokens=12, eos_token_id=-1)
        dynamic = model.generate(batch, max_new_tokens=12, eos_token_id=-1, static_cache=False, onednn=False)
        plain = model.generate(batch, max_new_tokens=12, eos_token_id=-1, use_cache=False, onednn=False)
        assert static.shape == (2, 12)
        assert torch.equal(static, dynamic) and torch.equal(static, plain), side
        # Sampling with the same generator draws the same tokens on both caches.
        sampled = [model.generate(batch, max_new_tokens=6, eos_token_id=-1, do_sample=True, static_cache=s,
                                  generator=torch.Generator().manual_seed(3)) for s in (True, False)]
        assert torch.equal(*sampled)


@pytest.mark.parametrize("static_cache", [True, False])
def test_n_new_tokens_take_one_prefill_and_n_minus_1_decoder_steps(models, static_cache: bool, monkeypatch) -> None:
    model = models["prefix"]
    calls = []
    original = model.llm.hidden_states
    monkeypatch.setattr(model.llm, "hidden_states", lambda *a, **k: calls.append(a[0].shape[1]) or original(*a, **k))
    batch = _batch(model, "left")
    out = model.generate(batch, max_new_tokens=5, eos_token_id=-1, static_cache=static_cache)
    assert out.shape == (2, 5)
    assert calls == [batch.input_ids.shape[1]] + [1] * 4
    calls.clear()
    assert model.generate(batch, max_new_tokens=1, eos_token_id=-1, static_cache=static_cache).shape == (2, 1)
    assert calls == [batch.input_ids.shape[1]]


def test_onednn_linears_switch_only_inside_the_block_and_only_without_grad(models) -> None:
    from lamm.llm.onednn_linear import available, onednn_linears

    if not available():
        pytest.skip("this torch has no oneDNN")
    model = models["gated_xattn"]
    linears = [m for m in model.llm.modules() if type(m) is nn.Linear]
    x = torch.randn(3, linears[0].in_features)
    expected = linears[0](x)
    with onednn_linears(model.llm) as count:
        assert count == len(linears) > 0
        with torch.no_grad():
            assert torch.allclose(linears[0](x), expected, atol=1e-5)
        y = linears[0](x.requires_grad_())  # training keeps F.linear and its gradient
        assert torch.equal(y, expected) and y.grad_fn is not None
    assert not any("forward" in vars(m) for m in linears)
