"""Training callbacks: the loss-curve PNG written into the run folder at the end."""
from __future__ import annotations

import csv
from pathlib import Path

import lightning as L


def plot_loss_curve(metrics_csv: Path, out_png: Path, phases: list[tuple[int, str]] = ()) -> bool:
    """Plot train/loss against step from Lightning's CSV log; False when there is nothing to plot.
    `phases` (first step after, label) are leading phases whose loss differs in kind: one line each."""
    if not metrics_csv.exists():
        return False
    steps, losses = [], []
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                steps.append(int(row["step"]))
                losses.append(float(row["train/loss"]))
    if not steps:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if phases:
        start = 0
        for end, label in [*sorted(phases), (steps[-1] + 1, "language model")]:
            rows = [i for i, step in enumerate(steps) if start <= step < end]
            ax.plot([steps[i] for i in rows], [losses[i] for i in rows], lw=1, label=label)
            start = end
        ax.legend()
    else:
        ax.plot(steps, losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return True


class LossCurve(L.Callback):
    """Writes `loss.png` next to the CSV log when training ends (rank 0 only); the training methods
    among the trainer's callbacks name their phases."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            from lamm.training.method import TrainingMethod

            phases = [p for cb in trainer.callbacks if isinstance(cb, TrainingMethod) for p in cb.loss_phases()]
            for logger in trainer.loggers:
                if isinstance(logger, L.pytorch.loggers.CSVLogger):
                    logger.save()
                    plot_loss_curve(Path(logger.log_dir) / "metrics.csv", self.run_dir / "loss.png", phases)


class RankConsistency(L.Callback):
    """At the end of a multi-process run, check every rank holds the same trainable weights; under a
    sharded strategy, whose ranks hold different shards by design, that they agree on the step and the
    parameters and that their shards tile every parameter exactly."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        import torch
        from torch.distributed.tensor import DTensor

        params = pl_module.model.trainable_parameters()
        if any(isinstance(p, DTensor) for p in params.values()):
            self._check_shards(trainer, params)
            return

        with torch.no_grad():
            checksum = sum(p.double().sum() * (i + 1) for i, p in enumerate(pl_module.model.trainable_parameters().values()))
        sums = trainer.strategy.all_gather(checksum.float().reshape(1)).flatten().tolist()
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
            raise RuntimeError(f"ranks hold different trainable weights after training: checksums {sums}")
        if trainer.is_global_zero:
            print(f"all {trainer.world_size} ranks hold identical trainable weights (checksum {sums[0]:.6f})")

    @staticmethod
    def _check_shards(trainer: L.Trainer, params: dict) -> None:
        import zlib

        import torch
        from torch.distributed.tensor import DTensor

        layout = ";".join(f"{n}:{tuple(p.shape)}" for n, p in sorted(params.items()))
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else 0 for p in params.values())
        total = sum(p.numel() for p in params.values() if isinstance(p, DTensor))
        mine = torch.tensor([trainer.global_step, zlib.crc32(layout.encode()) % (1 << 24), local], dtype=torch.float64)
        rows = trainer.strategy.all_gather(mine).reshape(trainer.world_size, 3)
        if (rows[:, :2] != rows[0, :2]).any() or int(rows[:, 2].sum()) != total:
            raise RuntimeError(f"ranks disagree after sharded training: (step, layout hash, shard elements) per rank "
                               f"{rows.tolist()}, expected the shards to hold {total} elements together")
        if trainer.is_global_zero:
            print(f"all {trainer.world_size} ranks agree: step {trainer.global_step}, the same {len(params)} trainable "
                  f"parameters, whose shards hold their {total:,} elements exactly once")
