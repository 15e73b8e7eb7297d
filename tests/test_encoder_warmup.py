"""Encoder warm-up: answer-word targets, what the phase trains, its schedule, and its config errors."""
from __future__ import annotations

import pytest
import torch

from lamm.build import build_model
from lamm.testing import colour_answer_batch, tiny_model_config
from lamm.training.encoder_warmup import AnswerWordHeads, EncoderWarmup, EncoderWarmupConfig
from lamm.training.module import LammModule
from lamm.training.optim import OptimConfig


def test_targets_are_the_answer_words_normalised() -> None:
    model = build_model(tiny_model_config())
    heads = AnswerWordHeads(model, EncoderWarmupConfig(steps=1, buckets=97))
    tok = model.tokenizer
    red = tok.encode("red", add_special_tokens=False)
    newline, = tok.encode("\n", add_special_tokens=False)
    eos = tok.eos_token_id
    labels = torch.tensor([[-100, *red, *red, newline, eos], [-100, -100, newline, eos] + [-100] * (2 * len(red) - 1)])
    target = heads.targets(labels)
    buckets = {t % 97 for t in red}
    assert target[0].sum() == pytest.approx(1.0)  # a repeated word counts once
    assert all(target[0, b] == pytest.approx(1 / len(buckets)) for b in buckets)
    assert target[1].sum() == 0.0  # whitespace and special tokens name nothing
    # A word whose bucket is also where a dropped token falls (-100 -> 0) survives what follows it.
    shared = AnswerWordHeads(model, EncoderWarmupConfig(steps=1, buckets=red[0]))
    after = shared.targets(torch.tensor([[red[0], -100, -100]]))
    assert after[0, 0] == 1.0


def test_warmup_trains_the_encoder_alone_then_hands_over() -> None:
    model = build_model(tiny_model_config())
    warmup = EncoderWarmupConfig(steps=15, lr=1e-2, warmup_steps=0)
    method = EncoderWarmup(model, warmup, max_steps=25)
    module = LammModule(model, OptimConfig(lr=1e-2, warmup_steps=0), max_steps=25, methods=[method])
    setup = module.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    batch = colour_answer_batch(model)  # "red" / "blue"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for step in range(warmup.steps):
        optimizer.zero_grad()
        loss = method.loss(step, model, batch)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("encoders.") for n in changed), sorted(changed)[:5]
    assert method.loss(warmup.steps, model, batch) is None  # after it, the language-model loss
    # After the warm-up: the language model's groups start their schedule, the heads stop.
    lrs = [(g.get("warmup_head", False), g["lr"]) for g in optimizer.param_groups]
    assert all(lr == 0.0 for head, lr in lrs if head) and all(lr > 0.0 for head, lr in lrs if not head)


def test_warmup_lr_during_the_phase() -> None:
    model = build_model(tiny_model_config())
    warmup = EncoderWarmupConfig(steps=10, lr=3e-3, warmup_steps=0)
    module = LammModule(model, OptimConfig(lr=1e-4, warmup_steps=0, encoder_lr_multiplier=0.3), max_steps=20,
                        methods=[EncoderWarmup(model, warmup, max_steps=20)])
    groups = module.configure_optimizers()["optimizer"].param_groups
    for g in groups:  # step 0: the warmed parts at the warm-up's lr, everything else held still
        warmed = g.get("warmup_head", False) or g["part"] == "encoder"
        assert g["lr"] == pytest.approx(3e-3 if warmed else 0.0), g["part"]


def test_warmup_config_errors() -> None:
    model = build_model(tiny_model_config())
    with pytest.raises(ValueError, match="encoder_warmup.steps=20 must be >= 0 and below trainer.max_steps=20"):
        EncoderWarmup(model, EncoderWarmupConfig(steps=20), max_steps=20)
    frozen = build_model(tiny_model_config(policy={"encoder": "frozen"}))
    with pytest.raises(ValueError, match="freezes every encoder"):
        EncoderWarmup(frozen, EncoderWarmupConfig(steps=5), max_steps=20)
