"""The Lightning Trainer of a run, built from config: `trainer.*` keys pass through to `Trainer(...)`,
loggers and callbacks come from the `logger` and `callbacks` groups by name (a table, never an import
path from a recipe), and gradient accumulation follows from `data.global_batch_size`.
"""
from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from lamm.plain_config import to_plain
from lamm.suggest import did_you_mean
from lamm.training.strategy import strategy_from_config

# Trainer arguments lamm-train sets itself; a config that sets them is refused, with the reason.
LAMM_SETS = {
    "use_distributed_sampler": "the resumable sampler shards the data itself (exact resume)",
    "plugins": "checkpoints are safetensors folders written by FolderCheckpointIO",
    "max_epochs": "training is one sample stream bounded by trainer.max_steps",
    "limit_val_batches": "there is no validation loop: held-out evaluation runs after training (`evaluate`)",
    "num_sanity_val_steps": "there is no validation loop: held-out evaluation runs after training (`evaluate`)",
    "default_root_dir": "the run folder is Hydra's output folder (hydra.run.dir)",
    "logger": "loggers come from the `logger` config group, e.g. logger=[csv,tensorboard]",
    "callbacks": "callbacks come from the `callbacks` config group, e.g. callbacks=[default,lr_monitor]",
    "enable_checkpointing": "checkpoints are how a run resumes and exports (see the `checkpoint` node)",
}


def _trainer_arguments() -> list[str]:
    import lightning as L

    return [p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self"]


def trainer_arguments(trainer_cfg: Any) -> dict[str, Any]:
    """The `trainer` node as `Trainer(...)` keyword arguments; ValueError (one line) naming a key
    Lightning's Trainer does not take or one lamm-train sets itself."""
    node = dict(to_plain(trainer_cfg))
    accepted = _trainer_arguments()
    for key in node:
        if key in LAMM_SETS:
            raise ValueError(f"trainer.{key} cannot be set: lamm-train sets it ({LAMM_SETS[key]})")
        if key not in accepted:
            raise ValueError(f"unknown trainer key 'trainer.{key}': lightning.Trainer has no argument {key!r}."
                             + did_you_mean(key, [f"trainer.{a}" for a in accepted if a not in LAMM_SETS]))
    return node


# -- data.global_batch_size -----------------------------------------------------------------------------

def gradient_accumulation(global_batch_size: int, batch_size: int, devices: int, num_nodes: int = 1) -> int:
    """Micro-batches per optimizer step so that one step sees `global_batch_size` samples over
    `devices` x `num_nodes` processes of `batch_size` each; ValueError when it does not divide."""
    per_step = batch_size * devices * num_nodes
    if global_batch_size <= 0 or global_batch_size % per_step:
        raise ValueError(f"data.global_batch_size={global_batch_size} is not a positive multiple of "
                         f"data.batch_size x devices x num_nodes = {batch_size} x {devices} x {num_nodes} = {per_step}")
    return global_batch_size // per_step


def accumulation_for(cfg: DictConfig, devices: int, num_nodes: int) -> int:
    """trainer.accumulate_grad_batches, or the one `data.global_batch_size` implies (both set: they must agree)."""
    explicit = OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=None)
    global_batch = OmegaConf.select(cfg, "data.global_batch_size", default=None)
    if global_batch is None:
        return int(explicit or 1)
    derived = gradient_accumulation(int(global_batch), int(cfg.data.batch_size), devices, num_nodes)
    if explicit not in (None, 1, derived):
        raise ValueError(f"trainer.accumulate_grad_batches={explicit} contradicts data.global_batch_size="
                         f"{global_batch} (which means {derived} here); set one of them")
    return derived


def devices_in_config(trainer_cfg: Any) -> int | None:
    """How many devices `trainer.devices` names, or None when only Lightning can tell ("auto", -1)."""
    devices = trainer_cfg.get("devices", "auto")
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    try:
        count = int(devices)
    except (TypeError, ValueError):
        return None
    return count if count > 0 else None


# -- loggers and callbacks by name -------------------------------------------------------------------

def _needs(package: str, what: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"{what} needs the `{package}` package, which is not installed (pip install {package})")


def _csv(run_dir: Path, **options: Any):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(run_dir, **{"name": "", "version": "logs", **options})


def _tensorboard(run_dir: Path, **options: Any):
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(run_dir, **{"name": "", "version": "tb", **options})


def _wandb(run_dir: Path, **options: Any):
    _needs("wandb", "logger=wandb")
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(save_dir=str(run_dir), **options)


def _mlflow(run_dir: Path, **options: Any):
    _needs("mlflow", "logger=mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(**{"tracking_uri": f"file:{run_dir / 'mlruns'}", **options})


LOGGERS: dict[str, Callable[..., Any]] = {"csv": _csv, "tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow}


def _progress_bar(run_dir: Path, **options: Any):
    from lightning.pytorch.callbacks import RichProgressBar

    return RichProgressBar(**{"leave": True, **options})


def _loss_curve(run_dir: Path, **options: Any):
    from lamm.training.callbacks import LossCurve

    return LossCurve(run_dir, **options)


def _rank_consistency(run_dir: Path, **options: Any):
    from lamm.training.callbacks import RankConsistency

    return RankConsistency(**options)


def _lr_monitor(run_dir: Path, **options: Any):
    from lightning.pytorch.callbacks import LearningRateMonitor

    return LearningRateMonitor(**{"logging_interval": "step", **options})


def _device_stats(run_dir: Path, **options: Any):
    from lightning.pytorch.callbacks import DeviceStatsMonitor

    return DeviceStatsMonitor(**options)


CALLBACKS: dict[str, Callable[..., Any]] = {
    "progress_bar": _progress_bar, "loss_curve": _loss_curve, "rank_consistency": _rank_consistency,
    "lr_monitor": _lr_monitor, "device_stats": _device_stats,
}


def _check_known(name: str, table: dict[str, Callable[..., Any]], group: str) -> None:
    """One line for a logger or callback name the table lacks, with the closest known one."""
    if name not in table:
        raise ValueError(f"unknown {group} '{name}'.{did_you_mean(name, list(table))} (known: {', '.join(table)})")


def _build_named(node: Any, table: dict[str, Callable[..., Any]], group: str, run_dir: Path) -> list[Any]:
    """One object per entry of a `{name: {options}}` node; an unknown name or option is one line."""
    out = []
    for name, options in (to_plain(node) if node is not None else {}).items():
        _check_known(name, table, group)
        try:
            out.append(table[name](run_dir, **(options or {})))
        except TypeError as exc:  # a wrong option name reaches the class's constructor
            raise ValueError(f"{group}.{name}: {exc}") from exc
    return out


def check_run_config(cfg: DictConfig) -> None:
    """Everything about the trainer a config can get wrong, before any model is built (one-line ValueErrors)."""
    trainer_arguments(cfg.trainer)
    from lamm.training.fsdp import fsdp_options

    strategy = to_plain(cfg.trainer).get("strategy")
    sharded = fsdp_options(strategy) is not None
    if not sharded:  # FSDP's options are checked there
        built = strategy_from_config(strategy, cfg.trainer.get("accelerator"))  # e.g. DeepSpeed installed
        # A mapping lamm builds (DeepSpeed), or one of Lightning's registered sharding names (deepspeed_stage_3, fsdp_cpu_offload)
        sharded = not isinstance(built, str) or built.startswith(("deepspeed", "fsdp"))
    if cfg.get("compile") and sharded:
        raise ValueError("compile=true: compiled blocks under a sharding strategy (trainer.strategy="
                         f"{strategy if isinstance(strategy, str) else dict(strategy).get('name')}) are untested; "
                         "use trainer=ddp or a single device with compile, or compile=false")
    for group, table in (("logger", LOGGERS), ("callbacks", CALLBACKS)):
        for name in (cfg.get(group) or {}):
            _check_known(name, table, group)
    devices = devices_in_config(cfg.trainer)
    if devices is not None:
        accumulation_for(cfg, devices, int(cfg.trainer.get("num_nodes", 1)))


def build_trainer(cfg: DictConfig, run_dir: Path, methods: Sequence[Any] = ()):
    """The run's Trainer: the `trainer` node's arguments, the named loggers and callbacks, the
    checkpoint callback from the `checkpoint` node, the training methods as callbacks, and what
    lamm-train sets itself (`LAMM_SETS`)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lamm.training.checkpoint_plugin import FolderCheckpointIO
    from lamm.training.fsdp import ShardedStrategy, fsdp_options

    kwargs = trainer_arguments(cfg.trainer)
    kwargs.pop("accumulate_grad_batches", None)  # set below, once the device count is known
    fsdp = fsdp_options(kwargs.get("strategy", "auto"))
    if fsdp is not None:  # FSDP2 with lamm's wrap policy and sharded checkpoints (lamm/training/fsdp.py)
        if methods:
            raise ValueError("training methods (" + ", ".join(type(m).__name__ for m in methods)
                             + ") do not run under trainer.strategy=fsdp yet; use trainer=ddp for them")
        kwargs["strategy"] = ShardedStrategy(activation_checkpointing=bool(cfg.get("gradient_checkpointing")), **fsdp)
    else:  # a Lightning strategy name, or a mapping lamm builds (DeepSpeed: lamm/training/strategy.py)
        kwargs["strategy"] = strategy_from_config(kwargs.get("strategy"), kwargs.get("accelerator"))
    strategy = kwargs["strategy"]
    if any(m.leaves_parameters_unused for m in methods) and strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        # A method's steps leave some trained parameters without gradients; DDP must be told, or it waits for them.
        kwargs["strategy"] = f"{strategy}_find_unused_parameters_true"
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step={step:06d}", auto_insert_metric_name=False,
        every_n_train_steps=int(cfg.checkpoint.every_n_steps), save_last=True,
        save_top_k=-1 if cfg.checkpoint.keep_all else 0,
    )
    trainer = L.Trainer(
        **kwargs, max_epochs=1, use_distributed_sampler=False, plugins=[FolderCheckpointIO()],
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=run_dir,
        logger=_build_named(cfg.get("logger"), LOGGERS, "logger", run_dir) or False,
        callbacks=[checkpoint, *_build_named(cfg.get("callbacks"), CALLBACKS, "callbacks", run_dir), *methods],
    )
    trainer.accumulate_grad_batches = accumulation_for(cfg, trainer.num_devices, trainer.num_nodes)
    return trainer
