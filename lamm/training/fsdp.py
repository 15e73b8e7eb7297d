"""Fully sharded data parallel: FSDP2 (`torch.distributed.fsdp.fully_shard`) on Lightning's ModelParallelStrategy.

Why this and not Lightning's `FSDPStrategy`: that one wraps FSDP1, which torch has deprecated for
`fully_shard`, and Lightning refuses it on a CPU accelerator; FSDP2 shards each parameter on its own
(a DTensor), so frozen weights and LoRA adapters share a unit without FSDP1's `use_orig_params`
flat-parameter rules, and it runs on a gloo CPU mesh (the tests train 2 CPU processes with it).

- Wrap policy: the units are the component contracts' `wrap_modules()` (LLM decoder layers, encoder
  blocks, gated cross-attention blocks, perceiver layers; `MultimodalLM.wrap_modules`), then each
  encoder and projector whole, then the model as the root unit.
- Mixed precision: `mixed_precision: bf16` gathers parameters and computes in bf16, reduces gradients
  in fp32; the sharded master weights and the optimizer state stay fp32.
- Activation checkpointing (`gradient_checkpointing: true`) recomputes the same units in backward.
- Checkpoints: `last.ckpt/` holds torch.distributed.checkpoint shards (one file per rank, plus
  `.metadata`) and `state.pt` (loops, data position, RNG; weights-only loadable), committed atomically
  like every lamm checkpoint (lamm/training/checkpoint_io.py). Reading one needs no process group:
  `sharded_weights` consolidates the trained tensors on one process, which is how the run's final
  `weights.safetensors` and its peft export are made.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from safetensors.torch import save_file
from torch import nn

from lamm.training.checkpoint_io import (STATE, WEIGHTS, commit_folder, is_sharded_checkpoint, resolve_checkpoint,
                                         sharded_weights, write_state_file)

NAME = "fsdp"
MIXED_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}
OPTIONS = ("mixed_precision", "reshard_after_forward")


def fsdp_options(strategy: Any) -> dict[str, Any] | None:
    """The options of a `trainer.strategy` naming FSDP (`fsdp`, or a mapping with `name: fsdp`), checked;
    None when it names another strategy. ValueError (one line) for an unknown option or value."""
    if isinstance(strategy, str):
        return {} if strategy == NAME else None
    if not isinstance(strategy, dict) or strategy.get("name") != NAME:
        return None
    options = {k: v for k, v in strategy.items() if k != "name"}
    for key in options:
        if key not in OPTIONS:
            raise ValueError(f"unknown option trainer.strategy.{key} of the fsdp strategy "
                             f"(options: {', '.join(OPTIONS)})")
    precision = options.get("mixed_precision")
    if precision is not None and precision not in MIXED_PRECISION:
        raise ValueError(f"trainer.strategy.mixed_precision must be null or one of {', '.join(MIXED_PRECISION)}, "
                         f"got {precision!r}")
    if not isinstance(options.get("reshard_after_forward", True), bool):
        raise ValueError("trainer.strategy.reshard_after_forward must be true or false, "
                         f"got {options['reshard_after_forward']!r}")
    return options


def recompute_in_backward(module: nn.Module) -> None:
    """Activation checkpointing of one unit: its forward keeps no activations and runs again in backward.
    The unit's own hooks (FSDP's gather) stay outside the recomputed function."""
    forward = module.forward

    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = checkpointed


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The wrap policy: the contracts' repeated blocks, then each encoder and projector whole."""
    return [*model.wrap_modules(), *model.encoders.values(), *model.projectors.values()]


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, BATCH_NORMS) for m in module.modules())


def shard_model(model: nn.Module, mesh: Any, mixed_precision: str | None = None, reshard_after_forward: bool = True,
                activation_checkpointing: bool = False) -> list[nn.Module]:
    """Apply `fully_shard` to each unit of `shard_units(model)` and then to the model (the root); returns the units.

    Units holding BatchNorm keep fp32 (FSDP casts parameters, not their fp32 running statistics) and are
    not recomputed (a second forward would update the statistics twice)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = MIXED_PRECISION.get(mixed_precision) if mixed_precision else None
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    if activation_checkpointing:
        model.llm.causal_lm.gradient_checkpointing_disable()  # the policy below covers the decoder layers
        for block in model.wrap_modules():
            if not has_batch_norm(block):
                recompute_in_backward(block)
    # fp32 units take fp32 inputs; the root casts none (each unit casts what it gets to its own type).
    fp32, root = policy, policy
    if dtype:
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        root = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    units = shard_units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=fp32 if has_batch_norm(unit) else policy,
                    reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=root, reshard_after_forward=reshard_after_forward)
    share_buffers_from_first_rank(model, mesh.get_group())
    return units


def share_buffers_from_first_rank(model: nn.Module, group: Any) -> None:
    """Before each training forward, every rank takes rank 0's trained buffers (BatchNorm statistics),
    as DDP does: FSDP shards parameters only, so each rank's buffers would otherwise follow its own data."""
    import torch.distributed as dist

    buffers = [t for t in model.trained_tensors().values() if not isinstance(t, nn.Parameter)]
    if not buffers or dist.get_world_size(group) < 2:
        return
    source = dist.get_global_rank(group, 0)

    def broadcast(module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            for buffer in buffers:
                dist.broadcast(buffer, src=source, group=group)

    model.register_forward_pre_hook(broadcast, prepend=True)


def first_rank_replicas(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The state dict with rank 0's copy of every unsharded tensor (BatchNorm statistics each rank moved
    since the last forward), as DDP saves rank 0's; torch.distributed.checkpoint would write any rank's."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    out = dict(state_dict)
    for name, value in state_dict.items():  # the same names in the same order on every rank
        if isinstance(value, torch.Tensor) and not isinstance(value, DTensor):
            out[name] = value.detach().clone()
            dist.broadcast(out[name], src=0)
    return out


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 over every process (data parallel = world size, no tensor parallelism), sharded checkpoints
    in lamm's checkpoint folders; `LammModule.configure_model` calls `shard`."""

    def __init__(self, mixed_precision: str | None = None, reshard_after_forward: bool = True,
                 activation_checkpointing: bool = False) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=True)
        self.mixed_precision = mixed_precision
        self.reshard_after_forward = reshard_after_forward
        self.activation_checkpointing = activation_checkpointing

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # all of it data parallel
        super().setup_environment()

    def shard(self, module: nn.Module) -> None:
        """Shard the LightningModule's model over the data-parallel mesh."""
        # FSDP2 warns at every call of a unit whose output is a view, in case the caller writes into it in
        # place; lamm never does (tests/test_fsdp.py and the DDP comparison in docs/results.md hold).
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        shard_model(module.model, self.device_mesh["data_parallel"], self.mixed_precision, self.reshard_after_forward,
                    self.activation_checkpointing)

    # -- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Every rank writes its shards into `<path>.tmp`, rank 0 adds state.pt and commits the folder."""
        import torch.distributed.checkpoint as dcp

        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier("lamm_fsdp_save_begin")
        state = dict(checkpoint)
        tensors = {"state_dict": first_rank_replicas(state.pop("state_dict")),
                   **{f"optimizer_{i}": s for i, s in enumerate(state.pop("optimizer_states", []))}}
        dcp.save(tensors, checkpoint_id=tmp)
        if self.global_rank == 0:
            write_state_file(state, tmp / STATE)
            commit_folder(tmp, path)
        self.barrier("lamm_fsdp_save_end")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load the shards into the sharded model and optimizer; return the rest (state.pt) to Lightning."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                             set_model_state_dict, set_optimizer_state_dict)

        folder = resolve_checkpoint(Path(self.broadcast(str(checkpoint_path))))
        if not is_sharded_checkpoint(folder):
            raise ValueError(f"{folder} is a checkpoint of an unsharded run: resume it with the trainer it was made "
                             "with, or start from its weights with init_from=")
        module = self.model
        state = {"state_dict": get_model_state_dict(module),
                 **{f"optimizer_{i}": get_optimizer_state_dict(module, opt) for i, opt in enumerate(self.optimizers)}}
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(module, state["state_dict"])
        for i, optimizer in enumerate(self.optimizers):
            set_optimizer_state_dict(module, optimizer, state[f"optimizer_{i}"])
        return torch.load(folder / STATE, map_location="cpu", weights_only=True)


def consolidate(folder: str | Path) -> Path:
    """Write `weights.safetensors` (the trained tensors, whole) into a sharded checkpoint folder, so every
    reader of lamm checkpoints (lamm-eval, init_from, the zoo exporters) reads it as it reads any run's."""
    folder = resolve_checkpoint(folder)
    tmp = folder / (WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in sharded_weights(folder).items()}, str(tmp))
    tmp.replace(folder / WEIGHTS)
    return folder / WEIGHTS


def is_sharded(strategy: Any) -> bool:
    """Whether a trainer's strategy shards the model (its checkpoints are sharded folders)."""
    return isinstance(strategy, ShardedStrategy)

