"""Turn an importer's plan into a lamm run folder, or a run into a peer's format, all or nothing.

Both write into a hidden sibling staging folder and rename it into place only when complete and
verified, so a failure leaves nothing behind and an existing folder is never touched.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from lamm.zoo.plan import ImportPlan, resolve_overrides

IMPORTED_WEIGHTS = "weights.safetensors"  # beside config.yaml in an imported run folder
IMPORT_FILE = "import.json"  # format, source, options and the overrides that rebuild the architecture


def check_new_folder(out: Path) -> Path:
    """`out` resolved, refused when it exists and is not empty (never overwrite a user's folder)."""
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(17, "the output exists and is not empty; choose a new folder", str(out))
    return out


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A staging folder beside `out`, renamed to `out` when the block succeeds, removed when it fails."""
    out = check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            out.rmdir()  # empty (checked above): the rename below needs it gone
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_options(converter: Any, fmt: str, options: dict[str, str], positional: int = 1) -> None:
    """One line naming an `--option` the format does not take, and the ones it does (`positional`: the
    converter's leading arguments that are not options, e.g. `src`)."""
    import inspect

    params = inspect.signature(converter).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in list(params.items())[positional:] if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in known:
            raise ValueError(f"--option {key}: format {fmt} takes no such option "
                             f"(its options: {', '.join(known) or 'none'})")


def imported_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Any) -> None:
    """Copy `weights` into `model` by state-dict name; a name the model lacks or a shape it does not
    have is one line naming both (the importer's mapping and the architecture disagree)."""
    from lamm.zoo.state import CheckpointKeyError

    params = model.state_dict(keep_vars=True)
    for name, value in weights.items():
        if name not in params:
            raise CheckpointKeyError(f"{source}: tensor '{name}' has no place in the model its config builds")
        if tuple(params[name].shape) != tuple(value.shape):
            raise CheckpointKeyError(f"{source}: tensor '{name}' has shape {list(value.shape)}, "
                                     f"the model expects {list(params[name].shape)}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def import_checkpoint(fmt: str, src: str | Path, out: str | Path, options: dict[str, str] | None = None,
                      verify: bool = True) -> Path:
    """Import `src` (a checkpoint of format `fmt`) into the new run folder `out`; returns `out`.

    `out` gets `config.yaml` (the full resolved train config), `weights.safetensors`, `import.json`
    and the folders the importer writes. With `verify`, the model is rebuilt from the staged folder and
    the weights loaded before anything is renamed into place.
    """
    from lamm.build import build_model
    from lamm.config import compose
    from lamm.registry import CHECKPOINT_FORMATS
    from lamm.training.run_folder import CONFIG_FILE

    importer = CHECKPOINT_FORMATS.get(fmt)  # unknown names: one line with a did-you-mean
    src = Path(src).expanduser()
    if not src.exists():
        raise FileNotFoundError(2, f"{fmt} source not found", str(src))
    final = check_new_folder(Path(out))
    check_options(importer, fmt, options or {})
    plan: ImportPlan = importer(src, **(options or {}))
    with staged_folder(final) as staging:
        if plan.write_folders is not None:
            plan.write_folders(staging)
        save_file({k: v.contiguous() for k, v in plan.weights.items()}, str(staging / IMPORTED_WEIGHTS))
        overrides = resolve_overrides(plan.overrides, final)
        cfg = compose("train", overrides)
        (staging / CONFIG_FILE).write_text(_to_yaml(cfg))
        record = {"format": fmt, "source": str(src.resolve()), "options": dict(options or {}),
                  "overrides": overrides, "notes": plan.notes}
        (staging / IMPORT_FILE).write_text(json.dumps(record, indent=2, default=str))
        if verify:  # the same config, pointing at the staged folders
            model = build_model(compose("train", resolve_overrides(plan.overrides, staging)).model)
            imported_weights_into(model, load_file(str(staging / IMPORTED_WEIGHTS)), staging / IMPORTED_WEIGHTS)
            del model
    return final


def export_checkpoint(fmt: str, run: str | Path, out: str | Path, options: dict[str, str] | None = None) -> Path:
    """Write the lamm run `run` as a folder of format `fmt` (e.g. hf_llava) at the new path `out`."""
    from lamm.registry import EXPORT_FORMATS

    exporter = EXPORT_FORMATS.get(fmt)
    run = Path(run).expanduser()
    if not run.exists():
        raise FileNotFoundError(2, "run folder not found", str(run))
    check_options(exporter, fmt, options or {}, positional=2)
    with staged_folder(Path(out)) as staging:
        exporter(run, staging, **(options or {}))
    return Path(out).expanduser().resolve()


def read_import_record(folder: str | Path) -> dict[str, Any] | None:
    """The `import.json` of an imported run folder, or None for any other folder."""
    path = Path(folder).expanduser() / IMPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=True)
