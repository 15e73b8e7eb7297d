"""A third fusion, registered in this file alone, runs through the real data processor, Lightning
training, generation and the benchmark inferencers: the fusion contract is all they need.

`summary_tokens`: each medium is written as two placeholders, which become the mean and the max of
the medium's projected tokens through a learned map (a two-token summary instead of prefix
fusion's K tokens or cross-attention's one). `summary_chunked` is the same with the other answers to
the contract's questions: a chunk end closes each medium's text (not at the end of a training
sequence) and option scoring must not share the prompt's cache.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lamm.batch import IGNORE_INDEX
from lamm.benchmarks.build import build_inferencer, build_instruction, build_scenario
from lamm.benchmarks.render import Renderer
from lamm.build import build_model
from lamm.datasets.processor import Processor
from lamm.datasets.sample import MediaRef, Sample, Turn
from lamm.datasets.synth import generate
from lamm.datasets.templates import get_template
from lamm.datasets.testing import write_image
from lamm.fusion.base import Fusion, MediaTokens, check_media_counts, placeholder_masks
from lamm.registry import FUSIONS
from lamm.testing import random_media, text_batch, tiny_model_config
from lamm.tokens import END_OF_CHUNK, PLACEHOLDERS, TextLayout
from lamm.training.datamodule import LammDataModule
from lamm.training.module import LammModule
from lamm.training.optim import OptimConfig


@FUSIONS.register("summary_tokens")
class SummaryTokenFusion(Fusion):
    """Two placeholders per medium: the mean and the max of its projected tokens, mixed by a Linear."""

    layout = TextLayout(placeholders=2)
    shares_prompt_cache = True

    def __init__(self, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.mix = nn.Linear(hidden_size, hidden_size)
        self.media_token_ids: dict[str, int] = {}
        self.embedded_shapes: list[tuple[int, int]] = []  # [rows, tokens] of every call, to see the scoring path
        self.checked_calls = 0

    def attach(self, llm) -> None:
        self.media_token_ids = dict(llm.media_token_ids)

    def embed(self, input_ids: torch.Tensor, embeds: torch.Tensor, media: dict[str, MediaTokens]) -> torch.Tensor:
        self.embedded_shapes.append(tuple(input_ids.shape))
        masks = placeholder_masks(input_ids, self.media_token_ids, PLACEHOLDERS)
        check_media_counts(masks, media, {m: 2 for m in media})
        out = embeds
        for modality, item in media.items():
            if len(item.tokens) == 0:
                continue
            tokens = item.tokens[torch.argsort(item.sample_index, stable=True)]
            summary = self.mix(torch.stack([tokens.mean(1), tokens.amax(1)], 1).to(self.mix.weight.dtype))
            out = out.masked_scatter(masks[modality].unsqueeze(-1), summary.reshape(-1, embeds.shape[-1]).to(embeds.dtype))
        return out

    def check_call(self, state, layer_kwargs) -> None:
        self.checked_calls += 1


@FUSIONS.register("summary_chunked")
class ChunkedSummaryFusion(SummaryTokenFusion):
    """The same summary, with chunk ends after each medium's text and no shared prompt cache."""

    layout = TextLayout(placeholders=2, chunk_end=END_OF_CHUNK, close_last_chunk=False)
    shares_prompt_cache = False


TOYS = ["summary_tokens", "summary_chunked"]


def toy_model(name: str):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    cfg["fusion"] = {"name": name}
    return build_model(cfg)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=4, sizes={"train": 16, "test": 6}, kinds=("shapes",))
    return root


@pytest.mark.parametrize("name", TOYS)
def test_the_processor_writes_media_as_the_fusion_says(name, tmp_path) -> None:
    model = toy_model(name)
    tok = model.tokenizer
    image, eoc = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids(END_OF_CHUNK)
    assert model.placeholder_text("image") == "<image><image>" + ("" if name == "summary_tokens" else END_OF_CHUNK)
    write_image(tmp_path / "a.png", (255, 0, 0))
    refs = [MediaRef("image", str(tmp_path / "a.png"), "image"), MediaRef("image", str(tmp_path / "a.png"), "image")]
    sample = Sample("s", [Turn("user", "<image> then <image>: same?"), Turn("assistant", "yes")], refs)
    for training in (True, False):
        proc = Processor(tok, get_template("chat"), model.media_specs(), model.fusion.layout, training=training)
        ids = proc(sample).input_ids
        runs = [int(c) for v, c in zip(*torch.unique_consecutive(ids, return_counts=True)) if v == image]
        assert runs == [2, 2]  # two placeholders per medium, not the projector's K
        # summary_chunked: one chunk end before the second medium, none at the end of the sequence
        assert int((ids == eoc).sum()) == (0 if name == "summary_tokens" else 1)


@pytest.mark.parametrize("name", TOYS)
def test_lightning_trains_the_toy_fusion_through_the_data_pipeline(name, synth) -> None:
    model = toy_model(name)
    before = model.fusion.mix.weight.detach().clone()
    data = {"name": "lamm", "path": str(synth / "shapes" / "train.json"), "template": "chat", "max_length": 256,
            "batch_size": 4}
    module = LammModule(model, OptimConfig(lr=1e-2), max_steps=2)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=LammDataModule(data, model, max_steps=2))
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(model.fusion.mix.weight.detach(), before)  # the media path got gradient and moved
    assert model.fusion.checked_calls > 0  # the model ran the fusion's post-call check


@pytest.mark.parametrize("name", TOYS)
def test_the_media_change_the_output(name) -> None:
    model = toy_model(name).eval()
    images = random_media(model, "image", 2)
    text = [f"{model.placeholder_text('image')} colour?"]
    with torch.no_grad():
        a = model(text_batch(model, text, {"image": (images[:1], [0])}), logits="last").logits
        b = model(text_batch(model, text, {"image": (images[1:] * 0 + 5, [0])}), logits="last").logits
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("name", TOYS)
def test_generation_and_option_scoring_through_the_inferencers(name, synth) -> None:
    model = toy_model(name).eval()
    samples = build_scenario({"name": "synth_shapes", "root": str(synth),
                              "tasks": ["colour", "shape", "count"]}).samples()[:4]
    queries = [build_instruction({"name": "standard"}).query(s) for s in samples]
    r = Renderer(model)

    direct = build_inferencer({"name": "direct", "max_new_tokens": 4})(model, samples, queries, r)
    assert len(direct) == len(samples) > 1 and all(isinstance(p.raw, str) for p in direct)
    batch, _ = r.generation_batch([(samples[0].id, queries[0], [], None)])
    assert int((batch.input_ids == model.tokenizer.convert_tokens_to_ids("<image>")).sum()) == 2
    cached = model.generate(batch, max_new_tokens=4, eos_token_id=-1)
    assert torch.equal(cached, model.generate(batch, max_new_tokens=4, eos_token_id=-1, use_cache=False))

    model.fusion.embedded_shapes.clear()
    preds = build_inferencer({"name": "ppl"})(model, samples, queries, r)
    first_call_rows = model.fusion.embedded_shapes[0][0]
    options = sum(len(q.labels) for q in queries)
    # The fusion decides the scoring path: prompts once (one row each), or one full row per option.
    assert first_call_rows == (len(samples) if name == "summary_tokens" else options)
    # Either way, the probabilities are the hand-computed ones over full prompt + option rows.
    for s, q, p in zip(samples, queries, preds):
        gen_batch, _ = r.generation_batch([(s.id, q, [], None)])
        n_prompt = gen_batch.input_ids.shape[1]
        logliks = []
        for cand in q.labels:
            full, _, _ = r.scoring_batch([(s.id, q, [], None, [cand])])
            with torch.no_grad():
                logp = model(full, logits="all").logits[0].float().log_softmax(-1)
            ids, scored = full.input_ids[0], full.labels[0]
            logliks.append(sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)) if scored[t] != IGNORE_INDEX))
        assert p.probs == pytest.approx(torch.tensor(logliks).softmax(0).tolist(), abs=1e-4)
        assert p.raw == q.labels[max(range(len(p.probs)), key=p.probs.__getitem__)]
