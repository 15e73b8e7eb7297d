"""Instructions (standard, query pool, option maps, CoT, multi-turn, in-context retrievers) and rendering."""
from __future__ import annotations

import pytest

from lamm.benchmarks.base import EvalSample
from lamm.benchmarks.build import build_instruction, build_scenario
from lamm.benchmarks.render import Renderer
from lamm.datasets.sample import MediaRef
from lamm.datasets.synth import generate


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=1, sizes={"train": 12, "test": 8}, kinds=("shapes",))
    return root


def _sample(**kw) -> EvalSample:
    base = dict(id="s1", question="What colour is the shape?", options=["red", "blue"], answer="blue",
                media=[MediaRef("image", "x.png", "image")], task="colour")
    return EvalSample(**{**base, **kw})


def test_standard_styles() -> None:
    q = build_instruction({"name": "standard"}).query(_sample())
    assert q.turns == ["What colour is the shape? Answer with one of: red, blue."] and q.labels == ["red", "blue"]
    q = build_instruction({"name": "standard"}).query(_sample(extra={"choice_style": "letters"}))
    assert q.turns[0].endswith("Options: (A) red (B) blue\nAnswer with the option's label.") and q.labels == ["A", "B"]
    q = build_instruction({"name": "standard", "option_style": "none"}).query(_sample())
    assert q.turns == ["What colour is the shape?"]


def test_query_pool_by_id() -> None:
    q = build_instruction({"name": "query_pool", "query_id": 2}).query(_sample())
    assert q.turns[0].startswith("Look at the image carefully. What colour is the shape?")
    q = build_instruction({"name": "query_pool", "query_id": 1, "pool": ["A: {question}", "B: {question}"]}).query(_sample())
    assert q.turns[0].startswith("B: What colour")
    with pytest.raises(ValueError, match="query_id 9 out of range"):
        build_instruction({"name": "query_pool", "query_id": 9})


@pytest.mark.parametrize("kind,labels", [("natural", ["A", "B", "C"]), ("neutral", ["foo", "bar", "baz"]),
                                         ("unnatural", ["C", "B", "A"])])
def test_option_maps(kind: str, labels: list[str]) -> None:
    q = build_instruction({"name": "option_map", "map": kind}).query(_sample(options=["red", "blue", "green"]))
    assert q.labels == labels and q.extra["option_map"] == kind
    assert f"({labels[0]}) red" in q.turns[0]


def test_cot_and_multi_turn() -> None:
    q = build_instruction({"name": "cot"}).query(_sample())
    assert q.turns == ["What colour is the shape? Let's think step by step.",
                       "So, what is the final answer? Answer with one of: red, blue."]
    q = build_instruction({"name": "multi_turn"}).query(_sample())
    assert q.turns == ["Describe the image briefly.", "What colour is the shape? Answer with one of: red, blue."]


def test_icl_retrievers(model, synth_root) -> None:
    scen = build_scenario({"name": "synth_shapes", "root": str(synth_root)})
    target = scen.samples()[0]
    pool_ids = [s.id for s in scen.support()]
    # random: seeded per sample id -> the same examples twice, never the sample itself.
    icl = build_instruction({"name": "icl", "retriever": "random", "num_examples": 3})
    icl.prepare(scen, model)
    first = icl.query(target)
    assert len(first.examples) == 3 and first.extra["examples"] == icl.query(target).extra["examples"]
    assert all(e in pool_ids for e in first.extra["examples"])
    # fixed: the first ones, or the ids asked for.
    icl = build_instruction({"name": "icl", "retriever": "fixed", "num_examples": 2})
    icl.prepare(scen, model)
    assert icl.query(target).extra["examples"] == pool_ids[:2]
    icl = build_instruction({"name": "icl", "retriever": "fixed", "fixed_ids": [pool_ids[5]], "num_examples": 1})
    icl.prepare(scen, model)
    assert icl.query(target).extra["examples"] == [pool_ids[5]]
    # topk_text: the support questions of the same task (identical text) rank first.
    icl = build_instruction({"name": "icl", "retriever": "topk_text", "num_examples": 2})
    icl.prepare(scen, model)
    chosen = {s.id: s for s in scen.support()}
    assert all(chosen[i].task == target.task for i in icl.query(target).extra["examples"])
    icl = build_instruction({"name": "icl", "retriever": "topk_text", "num_examples": 1, "text_embedding": "model"})
    icl.prepare(scen, model)
    assert chosen[icl.query(target).extra["examples"][0]].task == target.task
    # topk_image: put the target's own image in the pool under another id -> it must come first.
    twin = EvalSample("twin", "x?", target.options, target.answer, target.media, target.task)

    class WithTwin:
        def support(self):
            return scen.support() + [twin]

        def samples(self):
            return scen.samples()

    icl = build_instruction({"name": "icl", "retriever": "topk_image", "num_examples": 2})
    icl.prepare(WithTwin(), model)
    q = icl.query(target)
    assert q.extra["examples"][0] == "twin"
    # The rendered conversation has one marker per medium (2 examples + the sample) and loads.
    r = Renderer(model)
    batch, prompts = r.generation_batch([(target.id, q, [], None)])
    assert len(batch.media["image"]) == 3 and prompts[0].count("<image>") == 3
    assert q.examples[0].answer == target.answer


def test_icl_bad_retriever() -> None:
    with pytest.raises(ValueError, match="retriever must be one of"):
        build_instruction({"name": "icl", "retriever": "bm25"})
