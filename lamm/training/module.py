"""The LightningModule around MultimodalLM: loss, optimiser, schedule, trainable-only checkpoints.

Training methods (lamm/training/method.py) may own extra modules, set the optimizer plan and replace
the loss for some steps; this module only asks them, it knows none by name.
"""
from __future__ import annotations

import random
import time
from contextlib import nullcontext
from typing import Any

import lightning as L
import numpy as np
import torch

from lamm.training.compiled_blocks import compiled_blocks
from lamm.training.method import OptimizationPlan, TrainingMethod
from lamm.training.optim import OptimConfig, build_optimizer, param_groups, warmup_cosine


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; the last good checkpoint is kept."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint was made for another model configuration."""


class LammModule(L.LightningModule):
    """Trains the parts the model's policy declares; checkpoints hold only those parts."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, max_steps: int,
                 gradient_checkpointing: bool = False, methods: list[TrainingMethod] = (),
                 compile: bool = False) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.max_steps = max_steps
        self.methods = list(methods)
        for method in self.methods:
            extra = method.modules()
            if extra is None:
                continue
            if not method.name or hasattr(self, method.name):
                raise ValueError(f"training method {type(method).__name__} needs a free attribute name, got {method.name!r}")
            self.add_module(method.name, extra)  # inside the module: DDP syncs it, checkpoints carry it
        if gradient_checkpointing:
            model.llm.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.compiled_blocks = compiled_blocks(model) if compile else None
        self._last_time: float | None = None

    def configure_model(self) -> None:
        """Shard the model when the strategy shards (FSDP, lamm/training/fsdp.py); Lightning calls this
        once per fit, before the optimizer is built."""
        from lamm.training.fsdp import is_sharded

        if self._trainer is not None and is_sharded(self.trainer.strategy):
            self.trainer.strategy.shard(self)

    def train(self, mode: bool = True) -> "LammModule":
        super().train(mode)
        policy = getattr(self.model, "policy", None)  # set by lamm.build.build_model
        if mode and policy is not None and policy.encoder == "frozen":
            # A frozen encoder computes features, it does not learn: no dropout, no batch-norm statistics
            # updates (and its outputs match a frozen-feature cache, which is computed in eval mode).
            for encoder in self.model.encoders.values():
                encoder.eval()
        return self

    # -- steps ---------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int):
        if batch is None:  # every sample of this batch was skipped (data.on_error=skip)
            return None
        with self.compiled_blocks.active() if self.compiled_blocks is not None else nullcontext():
            loss = next((out for m in self.methods if (out := m.loss(self.global_step, self.model, batch)) is not None), None)
            if loss is None:
                loss = self.model(batch, logits="none").loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.global_step}, batch {batch_idx}, "
                f"sample ids {batch.ids[:8]}; stopping, the last good checkpoint is kept"
            )
        now = time.perf_counter()
        if self._last_time is not None:
            samples = len(batch.ids) or len(batch)  # packed rows hold several samples each
            rate = samples * self.trainer.world_size / max(now - self._last_time, 1e-9)
            self.log("samples_per_s", rate, prog_bar=True, on_step=True, batch_size=len(batch))
        self._last_time = now
        # One key whichever method gives the loss (Lightning repeats a key's last value once it stops being logged).
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=len(batch))
        groups = self.trainer.optimizers[0].param_groups
        shown = next((g for g in groups if g["lr"] > 0), groups[0])  # the first group this step trains
        self.log("lr", shown["lr"], prog_bar=True, on_step=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self):
        plans = [(m, p) for m in self.methods if (p := m.optimization(self.model, self.optim, self.max_steps))]
        if len(plans) > 1:
            raise ValueError("training methods " + " and ".join(type(m).__name__ for m, _ in plans)
                             + " each set the optimizer's groups and schedule; at most one may")
        if plans:
            plan = plans[0][1]
        else:
            groups = param_groups(self.model, self.optim)
            factor = warmup_cosine(self.optim.warmup_steps, self.max_steps, self.optim.min_lr_ratio)
            plan = OptimizationPlan(groups, [factor] * len(groups))
        optimizer = build_optimizer(self.model, self.optim, plan.groups)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, plan.factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        # RNG states are restored as late as possible so nothing between loading and the first
        # step consumes random numbers (dropout in LoRA is the main consumer).
        rng = getattr(self, "_pending_rng", None)
        if rng is not None:
            set_rng_state(rng)
            self._pending_rng = None

    # -- checkpoints: trainable weights only ---------------------------------------------------

    def _own_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must carry: what training changes in the model (`MultimodalLM.trained_tensors`,
        nothing frozen) under `model.`, and the training methods' own modules under their names."""
        own = {f"model.{n}": t for n, t in self.model.trained_tensors().items()}
        for method in self.methods:
            extra = method.modules()
            if extra is not None:
                own |= {f"{method.name}.{n}": t for n, t in extra.state_dict().items()}
        return own

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        names = set(self._own_tensors())
        full = super().state_dict(*args, **kwargs)
        return {k: v for k, v in full.items() if k in names}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, **kwargs: Any):
        own = self._own_tensors()
        expected = set(own)
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise CheckpointMismatchError(
                "checkpoint does not match this model config: "
                f"missing {_preview(missing)}; unexpected {_preview(unexpected)}"
            )
        for key, value in state_dict.items():
            if key in own and own[key].shape != value.shape:
                raise CheckpointMismatchError(
                    f"checkpoint does not match this model config: {key} has shape "
                    f"{list(value.shape)} in the checkpoint, {list(own[key].shape)} in the model"
                )
        return super().load_state_dict(state_dict, strict=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng"] = get_rng_state()
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1 and torch.distributed.is_initialized():
            # Every rank's own streams: ranks draw different amounts (their samples differ), so rank 0's are not theirs.
            states: list[Any] = [None] * world
            torch.distributed.all_gather_object(states, checkpoint["rng"])
            checkpoint["rng_per_rank"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        per_rank = checkpoint.get("rng_per_rank")
        world = self.trainer.world_size if self._trainer is not None else 1
        same_world = per_rank is not None and len(per_rank) == world
        self._pending_rng = per_rank[self.global_rank] if same_world else checkpoint.get("rng")


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
