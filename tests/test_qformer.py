"""The qformer projector against transformers' own Blip2QFormerModel (tiny, random weights copied by name)."""
from __future__ import annotations

import pytest
import torch

from lamm.projectors.qformer import QFormerProjector
from lamm.registry import PROJECTORS

MEDIA, HIDDEN, LLM = 24, 32, 40


@pytest.fixture(scope="module")
def pair():
    """A tiny HF Q-Former (+ query tokens and language projection, as Blip2ForConditionalGeneration holds
    them) with every weight randomised, and ours loaded from its state dict by name."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    torch.manual_seed(0)
    config = Blip2QFormerConfig(hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                cross_attention_frequency=2, encoder_hidden_size=MEDIA)
    qformer = Blip2QFormerModel(config).eval()
    query_tokens = torch.randn(1, 5, HIDDEN)
    projection = torch.nn.Linear(HIDDEN, LLM)
    with torch.no_grad():
        for p in [*qformer.parameters(), *projection.parameters()]:
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.shape[0] == HIDDEN else 0.0))
    hf_state = {**{f"qformer.{k}": v for k, v in qformer.state_dict().items()}, "query_tokens": query_tokens,
                **{f"language_projection.{k}": v for k, v in projection.state_dict().items()}}
    ours = PROJECTORS.build("qformer", in_dim=MEDIA, out_dim=LLM, num_query_tokens=5, num_hidden_layers=3,
                            hidden_size=HIDDEN, num_attention_heads=2, intermediate_size=64,
                            cross_attention_frequency=2, layer_norm_eps=config.layer_norm_eps).eval()
    ours.load_state_dict(hf_state, strict=True)  # the same names: BLIP-2's keys load as they are
    return ours, qformer, query_tokens, projection


def test_outputs_equal_blip2_qformer(pair) -> None:
    ours, qformer, query_tokens, projection = pair
    assert isinstance(ours, QFormerProjector)
    # Cross-attention in layers 0 and 2 (every 2nd from the first), as BLIP-2 places it.
    assert [layer.crossattention is not None for layer in ours.qformer.encoder.layer] == [True, False, True]
    for s in (1, 7, 16):
        media = torch.randn(3, s, MEDIA)
        with torch.no_grad():
            hidden = qformer(query_embeds=query_tokens.expand(3, -1, -1), encoder_hidden_states=media,
                             encoder_attention_mask=torch.ones(3, s, dtype=torch.long)).last_hidden_state
            expected = projection(hidden)
            got = ours(media)
        assert got.shape == (3, ours.num_tokens(s), LLM) == (3, 5, LLM)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_trains_and_rejects_bad_input(pair) -> None:
    proj = PROJECTORS.build("qformer", in_dim=MEDIA, out_dim=LLM, num_query_tokens=4, num_hidden_layers=2,
                            hidden_size=HIDDEN, num_attention_heads=2, intermediate_size=64, dropout=0.1)
    proj(torch.randn(2, 9, MEDIA)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    with pytest.raises(ValueError, match=r"^qformer projector expects \[N, S, 24\], got \[2, 9, 32\]$"):
        proj(torch.randn(2, 9, 32))
    with pytest.raises(ValueError, match="divisible by num_attention_heads"):
        PROJECTORS.build("qformer", in_dim=MEDIA, out_dim=LLM, hidden_size=30, num_attention_heads=4)
