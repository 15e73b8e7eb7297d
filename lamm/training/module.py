"""The LightningModule around MultimodalLM: loss, optimiser, schedule, trainable-only checkpoints."""
from __future__ import annotations

import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from lamm.training.encoder_warmup import AnswerWordHeads, EncoderWarmupConfig
from lamm.training.optim import OptimConfig, build_optimizer, phased_schedule, warmup_cosine


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; the last good checkpoint is kept."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was made for another model configuration."""


class LammModule(L.LightningModule):
    """Trains the parts the model's policy declares; checkpoints hold only those parts."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, max_steps: int,
                 gradient_checkpointing: bool = False, encoder_warmup: EncoderWarmupConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.max_steps = max_steps
        self.warmup = encoder_warmup or EncoderWarmupConfig()
        if not 0 <= self.warmup.steps < max_steps:
            raise ValueError(f"encoder_warmup.steps={self.warmup.steps} must be >= 0 and below "
                             f"trainer.max_steps={max_steps} (the warm-up steps count within the run)")
        # Trained during the first encoder_warmup.steps only; kept in checkpoints so a resume mid-warm-up is exact.
        self.warmup_heads = AnswerWordHeads(model, self.warmup) if self.warmup.steps else None
        if gradient_checkpointing:
            model.llm.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._last_time: float | None = None

    # -- steps ---------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int):
        if batch is None:  # every sample of this batch was skipped (data.on_error=skip)
            return None
        warming_up = self.global_step < self.warmup.steps
        if warming_up:
            loss = self.warmup_heads.loss(self.model, batch)
        else:
            loss = self.model(batch, logits="none").loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.global_step}, batch {batch_idx}, "
                f"sample ids {batch.ids[:8]}; stopping, the last good checkpoint is kept"
            )
        now = time.perf_counter()
        if self._last_time is not None:
            rate = len(batch) * self.trainer.world_size / max(now - self._last_time, 1e-9)
            self.log("samples_per_s", rate, prog_bar=True, on_step=True, batch_size=len(batch))
        self._last_time = now
        # One key for both phases (Lightning repeats a key's last value in later rows once it stops being logged).
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=len(batch))
        groups = self.trainer.optimizers[0].param_groups
        shown = next(g for g in groups if g.get("warmup_head")) if warming_up else groups[0]
        self.log("lr", shown["lr"], prog_bar=True, on_step=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self):
        if self.warmup_heads is None:
            optimizer = build_optimizer(self.model, self.optim)
            factor = warmup_cosine(self.optim.warmup_steps, self.max_steps, self.optim.min_lr_ratio)
        else:
            head = {"params": list(self.warmup_heads.parameters()), "lr": self.warmup.lr, "weight_decay": 0.0,
                    "warmup_head": True}
            optimizer = build_optimizer(self.model, self.optim, [head], split_encoders=True)
            factor = phased_schedule(optimizer.param_groups, self.optim, self.max_steps, self.warmup.steps,
                                     self.warmup.lr, self.warmup.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        # RNG states are restored as late as possible so nothing between loading and the first
        # step consumes random numbers (dropout in LoRA is the main consumer).
        rng = getattr(self, "_pending_rng", None)
        if rng is not None:
            set_rng_state(rng)
            self._pending_rng = None

    # -- checkpoints: trainable weights only ---------------------------------------------------

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Only what training changed (`MultimodalLM.trained_tensors`, nothing frozen): what a checkpoint must carry."""
        names = set(self.model.trained_tensors())
        full = super().state_dict(*args, **kwargs)
        return {k: v for k, v in full.items() if k.removeprefix("model.") in names or k.startswith("warmup_heads.")}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, **kwargs: Any):
        expected = {f"model.{n}" for n in self.model.trained_tensors()}
        if self.warmup_heads is not None:
            expected |= {f"warmup_heads.{n}" for n in self.warmup_heads.state_dict()}
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise CheckpointMismatchError(
                "checkpoint does not match this model config: "
                f"missing {_preview(missing)}; unexpected {_preview(unexpected)}"
            )
        own = {f"model.{n}": t for n, t in self.model.trained_tensors().items()}
        if self.warmup_heads is not None:
            own |= {f"warmup_heads.{n}": t for n, t in self.warmup_heads.state_dict().items()}
        for key, value in state_dict.items():
            if key in own and own[key].shape != value.shape:
                raise CheckpointMismatchError(
                    f"checkpoint does not match this model config: {key} has shape "
                    f"{list(value.shape)} in the checkpoint, {list(own[key].shape)} in the model"
                )
        return super().load_state_dict(state_dict, strict=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng"] = get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_rng = checkpoint.get("rng")


def _preview(names: list[str], n: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def get_rng_state() -> dict[str, Any]:
    """torch, numpy and Python RNG states as plain tensors/lists (loadable with weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
