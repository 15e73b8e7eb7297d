"""Batch-size invariance in fp32: batch 1, 8 and 16 give the same greedy tokens (exactly) and the same
option probabilities (to 1e-5: padding changes matmul shapes, so the last float bits may move) for the
direct and PPL inferencers, zero-shot and few-shot (`icl` with examples), prefix and gated cross-attention."""
from __future__ import annotations

import pytest
import torch

from lamm.benchmarks.build import build_inferencer, build_instruction, build_scenario
from lamm.benchmarks.render import Renderer
from lamm.build import build_model
from lamm.datasets.synth import generate
from lamm.testing import tiny_model_config

BATCH_SIZES = (1, 8, 16)
SMALL_LLM = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=3, sizes={"train": 6, "test": 24}, kinds=("shapes",), image_size=32)
    scen = build_scenario({"name": "synth_shapes", "root": str(root), "tasks": ["colour", "shape", "count", "position"]})
    assert len(scen.samples()) >= 17  # batch 16 leaves a batch of its own
    return scen


def tiny(fusion: str):
    cfg = tiny_model_config(fusion=fusion)
    cfg["llm"].update(SMALL_LLM)
    if fusion == "gated_xattn":
        cfg["fusion"]["gate_init"] = 1.0  # open gates: the media reach every token (closed ones would hide a bug)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def run_at(inferencer, model, samples, queries, renderer, batch_size: int):
    preds = []
    for i in range(0, len(samples), batch_size):
        preds += inferencer(model, samples[i:i + batch_size], queries[i:i + batch_size], renderer)
    return preds


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_batch_1_8_16_give_the_same_answers(fusion: str, scenario) -> None:
    model = tiny(fusion)
    renderer = Renderer(model)
    samples = scenario.samples()[:17]
    direct = build_inferencer({"name": "direct", "max_new_tokens": 6})
    ppl = build_inferencer({"name": "ppl"})
    for instruction in ({"name": "standard"}, {"name": "icl", "retriever": "random", "num_examples": 2}):
        instr = build_instruction(instruction)
        instr.prepare(scenario, model)
        queries = [instr.query(s) for s in samples]
        if instruction["name"] == "icl":  # rows differ in length and in media count: real padding
            assert all(len(q.examples) == 2 for q in queries)
        gen = {bs: run_at(direct, model, samples, queries, renderer, bs) for bs in BATCH_SIZES}
        assert len({p.raw for p in gen[1]}) > 1, "a constant answer would prove nothing"
        for bs in BATCH_SIZES[1:]:
            assert [p.raw for p in gen[bs]] == [p.raw for p in gen[1]], (fusion, instruction["name"], bs)
        scored = {bs: run_at(ppl, model, samples, queries, renderer, bs) for bs in BATCH_SIZES}
        for bs in BATCH_SIZES[1:]:
            assert [p.raw for p in scored[bs]] == [p.raw for p in scored[1]], (fusion, instruction["name"], bs)
            for a, b in zip(scored[bs], scored[1]):
                assert a.probs == pytest.approx(b.probs, abs=1e-5), (fusion, instruction["name"], bs)


def until_eos(ids: list[int], eos: list[int]) -> list[int]:
    """A row's new tokens through its first end token (a batch pads finished rows; alone it stops)."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_generated_ids_identical_across_batch_sizes(fusion: str, scenario) -> None:
    """The model boundary itself: `generate` token ids per row equal at batch 1, 8 and 16 (left padding)."""
    model = tiny(fusion)
    renderer = Renderer(model)
    icl = build_instruction({"name": "icl", "retriever": "random", "num_examples": 1})
    standard = build_instruction({"name": "standard"})
    icl.prepare(scenario, model)
    samples = scenario.samples()[:16]
    # Rows with two media, one medium and none, mixed in every batch: media counts and lengths differ per row.
    queries = [icl.query(s) if i % 3 == 0 else standard.query(s) for i, s in enumerate(samples)]
    for q in queries[2::3]:
        q.media = []
    items = [(s.id, q, [], None) for s, q in zip(samples, queries)]
    rows = {}
    for bs in BATCH_SIZES:
        out = []
        for i in range(0, len(items), bs):
            batch, _ = renderer.generation_batch(items[i:i + bs])
            new = model.generate(batch, max_new_tokens=8, eos_token_id=renderer.eos_ids)
            out += [until_eos(row.tolist(), renderer.eos_ids) for row in new]
        rows[bs] = out
    for bs in BATCH_SIZES[1:]:
        assert rows[bs] == rows[1], (fusion, bs)
