"""Encoder warm-up: the first steps of a run teach the trainable encoders to name the words of each
sample's answers from its media alone, without the LLM.

A from-scratch encoder learns slowly through a frozen LLM: its only signal is the language-model loss
back-propagated through every decoder layer (measured on the quickstart: 64% mean held-out accuracy
after 300 steps, 93% when the same CNN was first trained alone). This phase gives it a direct signal
at a few percent of an LLM step's cost: a linear head on the encoder's tokens (max over tokens, so
any token may carry a word) predicts the bag of answer tokens, softmax cross-entropy against the
normalised multi-hot target, as in classification-style vision-language pre-training (Joulin et al.
2016, "Learning Visual Features from Large Weakly Supervised Data"; Huang et al. 2024, SuperClass).
It reads only what the data already holds (the response tokens the LM loss is computed on), so it
works for any instruction data. The head is discarded: the language-model phase starts after it.

Token ids are hashed into `buckets` classes (id mod buckets) so the head stays small (~1M parameters
for a 256-wide encoder; the whole vocabulary would be 12M plus their AdamW state in every checkpoint).
Two answer words that share a bucket share a target, which a warm-up tolerates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamm.batch import Batch
from lamm.model import IGNORE_INDEX


@dataclass
class EncoderWarmupConfig:
    """The `encoder_warmup` config node. `steps` of the run's `trainer.max_steps` come first (0 = off)."""

    steps: int = 0
    lr: float = 1e-3
    warmup_steps: int = 20  # linear ramp, then cosine to lr * optim.min_lr_ratio at `steps`
    buckets: int = 4096

    @classmethod
    def from_config(cls, node) -> "EncoderWarmupConfig":
        from omegaconf import OmegaConf

        return cls(**OmegaConf.to_container(node, resolve=True)) if node is not None else cls()


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
