"""Inferencers on a tiny random model: batched == one by one, PPL equals a hand computation."""
from __future__ import annotations

import pytest
import torch

from lamm.benchmarks.base import EvalSample
from lamm.benchmarks.build import build_inferencer, build_instruction, build_scenario
from lamm.benchmarks.render import Renderer
from lamm.build import build_model
from lamm.datasets.synth import generate
from lamm.testing import tiny_model_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=2, sizes={"train": 4, "test": 6}, kinds=("shapes",))
    samples = build_scenario({"name": "synth_shapes", "root": str(root),
                              "tasks": ["colour", "shape", "count", "position"]}).samples()
    instr = build_instruction({"name": "standard"})
    return samples, [instr.query(s) for s in samples]


def test_direct_batched_equals_one_by_one(model, data) -> None:
    samples, queries = data
    r = Renderer(model)
    direct = build_inferencer({"name": "direct", "max_new_tokens": 5})
    batched = direct(model, samples, queries, r)
    single = [direct(model, [s], [q], r)[0] for s, q in zip(samples, queries)]
    assert [p.raw for p in batched] == [p.raw for p in single]
    assert batched[0].prompt.endswith("assistant\n")


def test_ppl_matches_hand_computation(model, data) -> None:
    samples, queries = data
    r = Renderer(model)
    preds = build_inferencer({"name": "ppl", "max_rows": 7})(model, samples, queries, r)  # 7 rows: several chunks
    for p, s in zip(preds, samples):
        assert len(p.probs) == len(s.options) and sum(p.probs) == pytest.approx(1.0)
        assert p.raw == s.options[max(range(len(p.probs)), key=p.probs.__getitem__)]
    # By hand for sample 0: full logits over prompt + option, sum of log p(answer tokens).
    s, q = samples[0], queries[0]
    gen_batch, _ = r.generation_batch([(s.id, q, [], None)])
    n_prompt = gen_batch.input_ids.shape[1]
    logliks = []
    for cand in q.labels:
        batch, _, _ = r.scoring_batch([(s.id, q, [], None, [cand])])
        with torch.no_grad():
            logits = model(batch, logits="all").logits[0].float().log_softmax(-1)
        ids = batch.input_ids[0]
        logliks.append(sum(float(logits[t - 1, ids[t]]) for t in range(n_prompt, len(ids))))
    expected = torch.tensor(logliks).softmax(0)
    assert preds[0].probs == pytest.approx(expected.tolist(), abs=1e-4)
    # One sample at a time gives the same probabilities as the batch.
    alone = build_inferencer({"name": "ppl"})(model, samples[:1], queries[:1], r)[0]
    assert alone.probs == pytest.approx(preds[0].probs, abs=1e-5)


def test_ppl_needs_options(model) -> None:
    s = EvalSample("x", "Describe.", [], ["a caption"])
    with pytest.raises(ValueError, match="closed option set"):
        build_inferencer({"name": "ppl"})(model, [s], [build_instruction({"name": "standard"}).query(s)], Renderer(model))


def test_multi_turn_and_cot(model, data) -> None:
    samples, _ = data
    r = Renderer(model)
    mt = build_instruction({"name": "multi_turn"})
    qs = [mt.query(s) for s in samples[:3]]
    preds = build_inferencer({"name": "multi_turn", "turn_tokens": 4, "max_new_tokens": 3})(model, samples[:3], qs, r)
    assert all(len(p.turns) == 1 for p in preds)
    assert preds[0].prompt.count("<|im_start|>user") == 2  # the second turn sees the first exchange
    ppl = build_inferencer({"name": "multi_turn", "turn_tokens": 4, "answer_by": "ppl"})(model, samples[:3], qs, r)
    assert all(p.probs is not None and len(p.turns) == 1 for p in ppl)
    std = build_instruction({"name": "standard"})
    cot = build_inferencer({"name": "cot", "turn_tokens": 4, "answer_by": "ppl"})(
        model, samples[:2], [std.query(s) for s in samples[:2]], r)
    assert "step by step" in cot[0].prompt and len(cot[0].turns) == 1 and cot[0].probs is not None
    with pytest.raises(ValueError, match="answer_by"):
        build_inferencer({"name": "cot", "answer_by": "vote"})


def test_shared_prefix_equals_full_rows(model, data) -> None:
    samples, queries = data
    r = Renderer(model)
    fast = build_inferencer({"name": "ppl"})(model, samples, queries, r)
    full = build_inferencer({"name": "ppl", "shared_prefix": False})(model, samples, queries, r)
    for a, b in zip(fast, full):
        assert a.probs == pytest.approx(b.probs, abs=1e-4) and a.raw == b.raw and a.prompt == b.prompt


def test_ppl_gated_xattn_falls_back_to_full_rows(data) -> None:
    samples, queries = data
    torch.manual_seed(0)
    xmodel = build_model(tiny_model_config(fusion="gated_xattn")).eval()
    preds = build_inferencer({"name": "ppl"})(xmodel, samples[:3], queries[:3], Renderer(xmodel))
    assert all(sum(p.probs) == pytest.approx(1.0) for p in preds)
