"""The error boundary every console script shares (`lamm`, `lamm-train`, `lamm-eval`, `lamm-chat`).

An expected failure — bad config, data, checkpoint, recipe, registry name or file — is printed as one
line `PROG: error: <what> (<file/key/sample>)` with exit code 2. Anything else is a bug in lamm: its
traceback is kept, followed by one line asking for a report, exit code 1. `LAMM_DEBUG=1` prints the
traceback of expected failures too.

Taxonomy (what counts as expected; README "Troubleshooting" says what to do about each):
- data: `DataError` (every data error names its file, sample and field), `ScenarioDataError`
- config: OmegaConf and Hydra errors, `TemplateError`, `MediaCountError`, and `ValueError` (lamm's own
  config checks raise it)
- registry: `UnknownComponentError` (lists the known names)
- recipe: `UnsafeRecipeError` (one line per refused construct), YAML errors
- checkpoint: `CheckpointMismatchError`, `NonFiniteLossError`, `LLMLoadError`
- I/O: `OSError` (missing, unreadable, unwritable files, a full disk), `UnicodeError`
- a `RuntimeError` raised by lamm's own code (a deliberate message), not one from torch or numpy
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator

EXIT_EXPECTED = 2
EXIT_BUG = 1
DEBUG_ENV = "LAMM_DEBUG"
REPORT_HINT = "this is a bug in lamm; please report it with the traceback above and the output of `lamm env`"
# lamm's own source folders: lamm/ and the top-level folders installed inside the lamm namespace.
_LAMM_PACKAGES = ("lamm", "lamm.datasets", "lamm.benchmarks", "lamm.encoders", "lamm.projectors")


def _expected_types() -> tuple[type[BaseException], ...]:
    """The exception classes of expected failures (imported late: the light ones first, every one optional)."""
    import yaml

    types: list[type[BaseException]] = [OSError, UnicodeError, ValueError, yaml.YAMLError]
    for module, names in (
        ("omegaconf.errors", ["OmegaConfBaseException"]),
        ("hydra.errors", ["HydraException"]),
        ("lamm.registry", ["UnknownComponentError"]),
        ("lamm.llm.loaders", ["LLMLoadError"]),
        ("lamm.training.module", ["CheckpointMismatchError", "NonFiniteLossError"]),
    ):
        if module.startswith("lamm.training") and module not in sys.modules:
            continue  # never import Lightning just to classify an error: if it was not loaded, none was raised
        with contextlib.suppress(ImportError):
            imported = __import__(module, fromlist=names)
            types += [getattr(imported, n) for n in names]
    return tuple(types)


def _raised_by_lamm(exc: BaseException) -> bool:
    """True when the innermost frame of the traceback is lamm's own code (a message written for users)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    source = Path(tb.tb_frame.f_code.co_filename).resolve()
    roots = [Path(sys.modules[name].__file__).resolve().parent for name in _LAMM_PACKAGES
             if getattr(sys.modules.get(name), "__file__", None)]
    return any(source.is_relative_to(root) for root in roots)


def is_expected(exc: BaseException) -> bool:
    """True for a failure the user can fix (bad input); False for a bug in lamm."""
    if isinstance(exc, _expected_types()):
        return True
    return type(exc) is RuntimeError and _raised_by_lamm(exc)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(exc: BaseException) -> list[str]:
    """The message lines of an expected failure: one, except a refused recipe lists each problem."""
    problems = getattr(exc, "problems", None)
    if problems:
        return [_one_line(p) for p in problems]
    if isinstance(exc, UnicodeDecodeError):
        return [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or type(exc).__name__
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        return [f"{_one_line(what)} ({target})"]
    key = getattr(exc, "full_key", None)  # OmegaConf errors: the config key at fault
    text = str(exc)
    if key and hasattr(exc, "full_key"):
        text = text.split("\n")[0] + f" (key {key})"
    elif type(exc).__name__ == "ConstructorError":  # YAML python tags: the mark names file and line
        text = f"{getattr(exc, 'problem', text)} {getattr(exc, 'problem_mark', '')}"
    text = text.split("Config search path")[0]  # Hydra appends its whole search path to a missing option
    return [_one_line(text) or type(exc).__name__]


def report(prog: str, exc: BaseException) -> int:
    """Print `exc` for the user of `prog`; the exit code to end with."""
    debug = bool(os.environ.get(DEBUG_ENV))
    if not is_expected(exc):
        traceback.print_exception(exc)
        print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)}; {REPORT_HINT}", file=sys.stderr)
        return EXIT_BUG
    if debug:
        traceback.print_exception(exc)
    for line in describe(exc):
        print(f"{prog}: error: {line}", file=sys.stderr)
    sys.stderr.flush()
    return EXIT_EXPECTED


@contextlib.contextmanager
def error_boundary(prog: str, on_error: Callable[[BaseException], None] | None = None) -> Iterator[None]:
    """Exit with `report`'s code on any exception inside (after `on_error`, e.g. to mark a run folder failed)."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - the boundary: every failure ends here, classified
        if on_error is not None:
            with contextlib.suppress(Exception):
                on_error(exc)
        sys.exit(report(prog, exc))


def run_guarded(prog: str, func: Callable[[], int | None]) -> int:
    """`func()`'s exit code, or `report`'s code if it raises."""
    try:
        return int(func() or 0)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary
        return report(prog, exc)


# What a run folder holds before its first checkpoint: Hydra's copies of the config and lamm's run
# records and logs. A folder holding only these (and no checkpoint) has nothing a user could lose.
RUN_RECORDS = frozenset({".hydra", "config.yaml", "run.json", "logs", "tb", "loss.png", "checkpoints", "train.log"})
FAILED_MARK = "FAILED"


def settle_failed_run(run_dir: Path, exc: BaseException) -> None:
    """Leave no half-written run behind: a run folder without a checkpoint is removed (and its run_name
    folder, if that leaves it empty); one with a checkpoint is kept and marked with a FAILED file."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    if getattr(exc, "locked_folder", None) == run_dir.resolve():
        return  # refused because another live process trains into this very folder: it is theirs
    checkpoints = run_dir / "checkpoints"
    has_checkpoint = checkpoints.is_dir() and any(checkpoints.iterdir())
    entries = {p.name for p in run_dir.iterdir()}
    ours = all(name in RUN_RECORDS or name.endswith((".log", ".lock")) for name in entries)
    if not has_checkpoint and ours:
        shutil.rmtree(run_dir)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only if empty: runs/<run_name>/ of a name that never trained
        return
    lines = describe(exc) if is_expected(exc) else [f"internal error: {type(exc).__name__}: {_one_line(exc)}"]
    (run_dir / FAILED_MARK).write_text("\n".join(lines) + "\n", encoding="utf-8")


class CheckpointReadError(ValueError):
    """Checkpoint weights that cannot be read (truncated, not safetensors), named by the path the user gave."""


@contextlib.contextmanager
def reading_checkpoint(path: object) -> Iterator[None]:
    """Turn safetensors' and weights-only torch.load's errors (which name no file) into one naming `path`."""
    import pickle

    try:
        yield
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refusing or failing on state.pt
        raise CheckpointReadError(f"cannot read the checkpoint state under {path} ({_one_line(exc)[:200]})") from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise CheckpointReadError(f"cannot read the checkpoint weights under {path} ({_one_line(exc)})") from exc
