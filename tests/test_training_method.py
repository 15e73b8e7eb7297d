"""The training-method contract: a method written here alone adds modules, a loss and an optimizer plan
to LammModule; its modules ride in checkpoints and stay out of inference; the core names no method."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from lamm.build import build_model
from lamm.policy import part_of
from lamm.testing import colour_answer_batch, tiny_model_config
from lamm.training.method import OptimizationPlan, TrainingMethod
from lamm.training.module import LammModule
from lamm.training.optim import OptimConfig, param_groups

REPO = Path(__file__).resolve().parents[1]


class ProjectorNormProbe(TrainingMethod):
    """A toy method: for its first `steps`, a probe on the projector output's mean is trained alone."""

    name = "probe"

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.probe = nn.Linear(1, 1)

    def modules(self) -> nn.Module:
        return self.probe

    def loss(self, step, model, batch):
        if step >= self.steps:
            return None
        return (self.probe(torch.ones(1, 1)) - 3.0).pow(2).sum()


class Frozen(TrainingMethod):
    """A toy method that sets the optimizer plan: one group, constant LR."""

    def optimization(self, model, optim, max_steps):
        groups = param_groups(model, optim)
        return OptimizationPlan(groups, [lambda step: 1.0] * len(groups))


def test_a_method_defined_here_adds_modules_loss_and_checkpoint_state() -> None:
    model = build_model(tiny_model_config())
    method = ProjectorNormProbe(steps=2)
    module = LammModule(model, OptimConfig(warmup_steps=0), max_steps=4, methods=[method])
    batch = colour_answer_batch(model)
    assert torch.equal(method.loss(0, model, batch), module.methods[0].loss(0, model, batch))
    assert method.loss(2, model, batch) is None  # after its steps: the language-model loss
    state = module.state_dict()
    assert {"probe.weight", "probe.bias"} <= set(state)
    assert all(k.startswith(("model.", "probe.")) for k in state)
    # Round trip into a fresh module with the same method; without it the checkpoint is a clear mismatch.
    again = LammModule(build_model(tiny_model_config()), OptimConfig(), max_steps=4, methods=[ProjectorNormProbe(2)])
    again.load_state_dict(state)
    assert torch.equal(again.probe.weight, method.probe.weight)
    from lamm.training.module import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="unexpected probe.bias"):
        LammModule(build_model(tiny_model_config()), OptimConfig(), max_steps=4).load_state_dict(state)


def test_a_method_sets_the_optimizer_plan_and_two_plans_are_refused() -> None:
    model = build_model(tiny_model_config())
    module = LammModule(model, OptimConfig(lr=0.5, warmup_steps=0), max_steps=10, methods=[Frozen()])
    schedule = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(5):
        schedule.optimizer.step()
        schedule.step()
    assert all(g["lr"] == 0.5 for g in schedule.optimizer.param_groups)  # constant: the method's factors
    both = LammModule(model, OptimConfig(), max_steps=10, methods=[Frozen(), Frozen()])
    with pytest.raises(ValueError, match="Frozen and Frozen each set the optimizer's groups and schedule"):
        both.configure_optimizers()


def test_optimizer_groups_and_policy_classify_parameters_alike() -> None:
    """One classifier (lamm.policy.part_of) decides a parameter's part for the policy and the optimizer."""
    model = build_model(tiny_model_config(fusion="gated_xattn", policy={"encoder": "full"}))
    cfg = OptimConfig(lr=1.0, encoder_lr_multiplier=2.0, fusion_lr_multiplier=3.0)
    parts = ("encoder", "projector", "fusion", "llm", "media_tokens")
    group_of = {id(p): g for g in param_groups(model, cfg, apart=parts) for p in g["params"]}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert group_of[id(param)]["part"] == part_of(name), name


def test_the_core_names_no_training_method() -> None:
    """LammModule, the optimizer, the export, the trainer and the callbacks know methods only by the contract."""
    for path in ("lamm/training/module.py", "lamm/training/optim.py", "lamm/training/export.py",
                 "lamm/training/trainer.py", "lamm/training/callbacks.py", "lamm/chat/loading.py"):
        text = (REPO / path).read_text()
        assert not re.search(r"warmup_head|encoder_warmup|EncoderWarmup|AnswerWord", text), path
