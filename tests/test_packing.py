"""Multimodal packing and length-grouped batching: same loss as unpacked, exact resume (the typed
`lamm-train data.packing=true data.group_by_length=true` runs in tests/test_feature_cache.py, with the cache)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lamm.batch import IGNORE_INDEX
from lamm.build import build_model
from lamm.datasets.collate import Collator
from lamm.datasets.packing import PackingCollator, first_fit_decreasing
from lamm.datasets.processor import ProcessedSample
from lamm.testing import media_text, random_media, tiny_model_config
from lamm.training.sampler import ResumableStreamSampler


def _samples(model) -> list[ProcessedSample]:
    """Six samples of different lengths, one or two images each, text before the first image (as chat has)."""
    tok, ph = model.tokenizer, media_text(model, "image")
    images = random_media(model, "image", 9)
    out, used = [], 0
    for i, words in enumerate([3, 20, 7, 40, 5, 12]):
        n = 1 + i % 2
        ids = torch.tensor(tok("user: " + " ".join([ph + " look"] * n) + " answer " + " red" * words,
                               add_special_tokens=False).input_ids)
        labels = ids.clone()
        labels[: len(ids) // 2] = IGNORE_INDEX  # the response half carries the loss
        out.append(ProcessedSample(str(i), ids, labels, {"image": list(images[used:used + n])}))
        used += n
    return out


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_packed_loss_equals_unpacked_loss(fusion: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(encoder="small_vit", fusion=fusion)).eval()
    with torch.no_grad():  # open the gates, so cross-attention media reach the text
        for name, p in model.fusion.named_parameters():
            if "gate" in name:
                p.fill_(1.0)
    samples = _samples(model)
    pad = model.tokenizer.pad_token_id
    plain, packed = Collator(pad)(samples), PackingCollator(pad, 128)(samples)
    assert len(packed) < len(plain) and sorted(packed.ids) == sorted(plain.ids)
    assert int(packed.attention_mask.sum()) == int(plain.attention_mask.sum())
    with torch.no_grad():
        expected, got = model(plain).loss, model(packed).loss
        # Without per-sample positions the samples would attend to each other: a different loss.
        mixed = model(dataclasses.replace(packed, position_ids=None)).loss
    assert abs(got.item() - expected.item()) < 1e-5, (got, expected)
    assert abs(mixed.item() - expected.item()) > 1e-4
    if fusion == "gated_xattn":  # a sample's text before its first image must not see the previous sample's image
        begin = model.fusion.begin
        model.fusion.begin = lambda ids, media, segments=None: begin(ids, media)
        with torch.no_grad():
            assert abs(model(packed).loss.item() - expected.item()) > 1e-4
    with pytest.raises(ValueError, match="for training"):
        model.prefill(packed, use_cache=True)


def test_first_fit_decreasing_packs_within_capacity() -> None:
    rows = first_fit_decreasing([50, 90, 30, 60, 10, 70], 100)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum([50, 90, 30, 60, 10, 70][i] for i in row) <= 100 for row in rows)
    assert len(rows) == 4  # 90+10, 70+30, 60, 50 (ffd)
    with pytest.raises(ValueError, match="longer than data.max_length=100"):
        first_fit_decreasing([101], 100)


def test_length_grouped_sampler_resumes_exactly() -> None:
    lengths = [int(x) for x in torch.randint(5, 200, (403,))]
    make = lambda: ResumableStreamSampler(403, 900, seed=3, batch_size=4, lengths=lengths)  # noqa: E731
    full = list(make())
    for start in (0, 4, 200, 404, 808):
        sampler = make()
        sampler.start_global = start
        assert list(sampler) == full[start:]
    for window in (full[:200], full[200:400]):  # windows of 50 batches of 4: sorted longest first
        assert [lengths[i] for i in window] == sorted((lengths[i] for i in window), reverse=True)
    assert sorted(full[:403]) == list(range(403))  # still every sample once per pass
