"""Encoder warm-up: the first `steps` of a run teach the trainable encoders to name the words of each
sample's answers from its media alone, without the LLM; then the language-model loss takes over.

A from-scratch encoder learns slowly through a frozen LLM, whose every decoder layer dilutes its only
signal; this phase gives it a direct one at a few percent of an LLM step's cost. A linear head on the
encoder's tokens (max over tokens, so any token may carry a word) predicts the bag of answer tokens,
softmax cross-entropy against the normalised multi-hot target, as in classification-style
vision-language pre-training (Joulin et al. 2016; SuperClass, Huang et al. 2024). It reads only what
the data already holds (the response tokens the LM loss is computed on), so it works for any
instruction data.

Everything about the phase lives here, as one training method (lamm/training/method.py): the heads
(held by LammModule under `warmup_heads`, so checkpoints keep them for exact resume and the export,
which takes only the model's tensors, leaves them out), the optimizer groups and phased schedule, the
loss during the first `steps`, and its phase on the loss curve.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamm.batch import Batch
from lamm.batch import IGNORE_INDEX
from lamm.training.method import OptimizationPlan, TrainingMethod
from lamm.training.optim import OptimConfig, param_groups, warmup_cosine


@dataclass
class EncoderWarmupConfig:
    """The `encoder_warmup` config node. `steps` of the run's `trainer.max_steps` come first (0 = off)."""

    steps: int = 0
    lr: float = 1e-3
    warmup_steps: int = 20  # linear ramp, then cosine to lr * optim.min_lr_ratio at `steps`
    buckets: int = 4096  # answer-token ids hashed (id mod buckets): a small head; words sharing a bucket share a target

    @classmethod
    def from_config(cls, node) -> "EncoderWarmupConfig":
        from dataclasses import fields

        from lamm.plain_config import to_plain

        data = to_plain(node) if node is not None else {}
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"encoder_warmup: unknown key(s) {unknown}; keys are {[f.name for f in fields(cls)]}")
        return cls(**data)


class EncoderWarmup(TrainingMethod):
    """The warm-up phase as a training method: its heads, optimizer groups, schedule and loss."""

    name = "warmup_heads"  # the checkpoint key prefix runs have always used, so their checkpoints still resume
    leaves_parameters_unused = True  # warm-up steps give the LLM side no gradient

    def __init__(self, model: nn.Module, cfg: EncoderWarmupConfig, max_steps: int) -> None:
        if not 0 <= cfg.steps < max_steps:
            raise ValueError(f"encoder_warmup.steps={cfg.steps} must be >= 0 and below "
                             f"trainer.max_steps={max_steps} (the warm-up steps count within the run)")
        super().__init__()
        self.cfg = cfg
        self.heads = AnswerWordHeads(model, cfg)

    @classmethod
    def from_config(cls, node, model: nn.Module, max_steps: int) -> "EncoderWarmup | None":
        cfg = EncoderWarmupConfig.from_config(node)
        if cfg.steps < 0:
            raise ValueError(f"encoder_warmup.steps={cfg.steps} must be >= 0")
        return cls(model, cfg, max_steps) if cfg.steps else None

    def modules(self) -> nn.Module:
        return self.heads

    def optimization(self, model: nn.Module, optim: OptimConfig, max_steps: int) -> OptimizationPlan:
        """The encoders' groups apart from the rest, plus the heads' group; see `phased_schedule`."""
        head = {"params": list(self.heads.parameters()), "lr": self.cfg.lr, "weight_decay": 0.0, "part": "",
                "warmup_head": True}
        groups = [*param_groups(model, optim, apart=("encoder",)), head]
        return OptimizationPlan(groups, phased_schedule(groups, optim, max_steps, self.cfg))

    def loss(self, step: int, model: nn.Module, batch: Batch) -> torch.Tensor | None:
        return self.heads.loss(model, batch) if step < self.cfg.steps else None

    def loss_phases(self) -> list[tuple[int, str]]:
        return [(self.cfg.steps, "encoder warm-up (answer words)")]


def phased_schedule(groups: list[dict], optim: OptimConfig, total_steps: int, cfg: EncoderWarmupConfig) -> list:
    """One LR multiplier per group: during the first `cfg.steps` the encoder groups and the heads run
    at `cfg.lr` (ramp over `cfg.warmup_steps`, then cosine), everything else at 0; afterwards every
    group but the heads follows `optim`'s warmup + cosine over the remaining steps."""
    main = warmup_cosine(optim.warmup_steps, total_steps - cfg.steps, optim.min_lr_ratio)
    phase = warmup_cosine(cfg.warmup_steps, cfg.steps, optim.min_lr_ratio)

    def for_group(group: dict):
        head, warmed = group.get("warmup_head", False), group["part"] == "encoder" or group.get("warmup_head", False)
        phase_scale = cfg.lr / group["lr"] if warmed and group["lr"] > 0 else 0.0

        def factor(step: int) -> float:
            if step < cfg.steps:
                return phase_scale * phase(step)
            return 0.0 if head else main(step - cfg.steps)

        return factor

    return [for_group(g) for g in groups]


class AnswerWordHeads(nn.Module):
    """One linear head per warmed modality: pooled encoder tokens -> answer-token buckets."""

    def __init__(self, model: nn.Module, cfg: EncoderWarmupConfig) -> None:
        super().__init__()
        trainable = [m for m, enc in model.encoders.items() if any(p.requires_grad for p in enc.parameters())]
        if not trainable:
            raise ValueError("encoder_warmup.steps > 0, but model.policy freezes every encoder: "
                             "there is nothing to warm up (set encoder_warmup.steps=0)")
        if cfg.buckets < 2:
            raise ValueError(f"encoder_warmup.buckets must be at least 2, got {cfg.buckets}")
        self.buckets = cfg.buckets
        self.heads = nn.ModuleDict({m: nn.Linear(model.encoders[m].output_dim, cfg.buckets) for m in trainable})
        # Response tokens that name nothing: special tokens and pure whitespace/punctuation pieces.
        tok = model.tokenizer
        vocab = len(tok)
        names = tok.convert_ids_to_tokens(list(range(vocab)))
        content = torch.tensor([n is not None and bool(tok.convert_tokens_to_string([n]).strip(" \t\n.,;:!?'\""))
                                for n in names])
        content[list(tok.all_special_ids)] = False
        self.register_buffer("content", content, persistent=False)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """[B, buckets]: each sample's answer-token buckets, normalised to sum to 1 (0 when none)."""
        ids = labels.clamp(min=0)
        keep = (labels != IGNORE_INDEX) & (ids < len(self.content)) & self.content[ids.clamp(max=len(self.content) - 1)]
        # Dropped tokens write into a spare last column: scattered into a word's bucket they would overwrite it.
        where = torch.where(keep, ids % self.buckets, self.buckets)
        hot = torch.zeros(len(labels), self.buckets + 1, device=labels.device)
        hot = hot.scatter_(1, where, 1.0)[:, :-1]  # repeats of a word count once
        return hot / hot.sum(1, keepdim=True).clamp(min=1.0)

    def logits(self, model: nn.Module, modality: str, media: torch.Tensor) -> torch.Tensor:
        """[M, buckets] for M media of `modality`: the head on the max over the encoder's tokens."""
        return self.heads[modality](model.encoders[modality](media).max(1).values)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over every medium of a warmed modality whose sample has answer words."""
        if batch.labels is None:
            raise ValueError("encoder_warmup needs labelled batches (the response tokens name the targets)")
        target = self.targets(batch.labels)
        losses = []
        for modality in self.heads:
            item = batch.media.get(modality)
            if item is None or len(item) == 0:
                continue
            log_p = F.log_softmax(self.logits(model, modality, item.data).float(), -1)
            t = target[item.sample_index]
            has_words = t.sum(1) > 0
            losses.append(-(t * log_p).sum(1)[has_words])
        if not losses:  # no medium in this batch: a zero that still touches the heads (DDP needs every rank to step)
            return sum(p.sum() for p in self.heads.parameters()) * 0.0
        per_medium = torch.cat(losses)
        return per_medium.mean() if len(per_medium) else per_medium.sum()
