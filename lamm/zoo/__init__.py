"""Published checkpoints in and out: the checkpoint-format registry's contract and helpers.

An importer maps a peer's checkpoint onto lamm's components (`ImportPlan`); `import_checkpoint` writes
it as a lamm run folder that `lamm-eval`, `lamm-chat` and `lamm-train init_from=` read.
"""
from lamm.registry import CHECKPOINT_FORMATS, EXPORT_FORMATS
from lamm.zoo.plan import OUT, ImportPlan
from lamm.zoo.state import CheckpointKeyError, StateReader, open_state
from lamm.zoo.writer import import_checkpoint, export_checkpoint, read_import_record

__all__ = ["CHECKPOINT_FORMATS", "EXPORT_FORMATS", "OUT", "CheckpointKeyError", "ImportPlan", "StateReader",
           "export_checkpoint", "import_checkpoint", "open_state", "read_import_record"]
