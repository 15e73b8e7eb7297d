"""The Lightning side of the checkpoint folder format: a CheckpointIO plugin over lamm.training.checkpoint_io.

Kept apart so that reading a run (lamm-eval, lamm-chat, lamm-serve) never imports Lightning.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from lamm.training.checkpoint_io import read_checkpoint, write_checkpoint


class FolderCheckpointIO(CheckpointIO):
    """Lightning CheckpointIO plugin writing and reading the folder format above."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        write_checkpoint(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        shutil.rmtree(path, ignore_errors=True)
