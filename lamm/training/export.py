"""Export a trained model (plain peft adapter + the other trained weights) and load one back."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from lamm.policy import part_of
from lamm.training.checkpoint_io import WEIGHTS, is_sharded_checkpoint, resolve_checkpoint, sharded_weights
from lamm.training.run_folder import CONFIG_FILE
from lamm.zoo.writer import IMPORTED_WEIGHTS, imported_weights_into

EXPORT_DIR = "export"
ADAPTER_DIR = "adapter"
LAMM_WEIGHTS = "lamm_weights.safetensors"


def export_model(model: Any, out_dir: Path) -> Path:
    """`out_dir/adapter/` loads with `PeftModel.from_pretrained` alone; `lamm_weights.safetensors`
    holds every other trained tensor (encoder, projector, fusion and its LoRA, media-token embeddings,
    BatchNorm statistics)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model.llm.has_lora:
        # LoRA tensors only: the media-token rows are in lamm_weights, so the adapter stays small and
        # loads on the plain base model (peft would otherwise save the whole resized embedding).
        model.llm.peft_model.save_pretrained(str(out_dir / ADAPTER_DIR), save_embedding_layers=False)
    others = {n: t.detach().contiguous().cpu() for n, t in model.trained_tensors().items()
              if not in_llm_adapter(model, n)}
    save_file(others, str(out_dir / LAMM_WEIGHTS))
    return out_dir


def in_llm_adapter(model: Any, name: str) -> bool:
    """Whether the trained tensor `name` is saved in the LLM's peft adapter (the LLM's own LoRA; a
    fusion's LoRA, e.g. Multimodal-GPT's on the cross-attention, is not: it goes to lamm_weights)."""
    return model.llm.has_lora and part_of(name) == "llm" and "lora_" in name


def _is_export(path: Path) -> bool:
    return (path / LAMM_WEIGHTS).is_file() and not (path / CONFIG_FILE).exists()


def _export_weights(model: Any, export: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An export's lamm_weights by state-dict name, after loading its peft adapter into the model's own
    LLM LoRA through peft (which knows the adapter's names); returns them and the adapter's keys."""
    adapter = export / ADAPTER_DIR / "adapter_model.safetensors"
    loaded: list[str] = []
    if adapter.is_file():
        if not model.llm.has_lora:
            raise ValueError(f"init_from: {export} holds an LLM LoRA adapter, but this model's LLM has no LoRA "
                             "(set model.policy.llm=lora with the same model/lora)")
        from peft import set_peft_model_state_dict

        tensors = load_file(str(adapter))
        result = set_peft_model_state_dict(model.llm.peft_model, tensors)
        if result.unexpected_keys:
            raise ValueError(f"init_from: {adapter} tensor '{result.unexpected_keys[0]}' has no place in this model's "
                             "LLM LoRA (different model/lora targets)")
        loaded = [f"{ADAPTER_DIR}/{k}" for k in tensors]
    return load_file(str(export / LAMM_WEIGHTS)), loaded


def _run_folder_of(path: Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) for a run folder or a checkpoint inside one; an imported run's
    checkpoint is its weights file (lamm/zoo/writer.py)."""
    if (path / CONFIG_FILE).exists():
        if (path / IMPORTED_WEIGHTS).exists() and not (path / "checkpoints").exists():
            return path, path / IMPORTED_WEIGHTS
        return path, path / "checkpoints" / "last.ckpt"
    run = path.parent.parent
    if (run / CONFIG_FILE).exists():
        return run, path
    raise FileNotFoundError(f"{path} is neither a lamm run folder (with {CONFIG_FILE}) nor a checkpoint inside one")


def _model_weights(ckpt: Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """The model's own tensors of a checkpoint folder or an imported weights file, by state-dict name.

    A checkpoint also holds a training method's modules (e.g. probe heads) beside the model's `model.`
    tensors, for resume; they are left out."""
    if ckpt.suffix == ".safetensors":
        return load_file(str(ckpt), device=map_location)
    folder = resolve_checkpoint(ckpt)
    if (folder / WEIGHTS).exists():
        weights = load_file(str(folder / WEIGHTS), device=map_location)
    elif is_sharded_checkpoint(folder):  # a sharded (FSDP) checkpoint from before the end of its run: consolidated here
        weights = sharded_weights(folder)
    else:  # a DeepSpeed checkpoint of an unfinished run (lamm/training/deepspeed_zero.py)
        raise FileNotFoundError(f"{ckpt} holds DeepSpeed ZeRO shards but no consolidated {WEIGHTS}: only the final "
                                "checkpoint of a finished run has them (resume the run to finish it)")
    return {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}


def load_for_inference(path: str | Path, map_location: str = "cpu") -> tuple[Any, DictConfig]:
    """Rebuild the model of a run folder (or one of its checkpoints) with its trained weights, in eval mode."""
    from lamm.build import build_model

    run, ckpt = _run_folder_of(Path(path))
    cfg = OmegaConf.load(run / CONFIG_FILE)
    model = build_model(cfg.model)
    if cfg.get("init_from"):
        # Parts this run froze came from the source run (e.g. a trained CNN) and are not in its own
        # checkpoint: take them from the source first, as training did.
        source = Path(cfg.init_from)
        if not source.exists():
            raise FileNotFoundError(f"{run / CONFIG_FILE} sets init_from={cfg.init_from}, which does not exist "
                                    f"(run from the folder training ran in, or restore that run)")
        init_from_run(model, source)
    weights = _model_weights(ckpt, map_location)
    if ckpt.name == IMPORTED_WEIGHTS:  # an import holds what its HF folders do not: load it whole, strictly
        imported_weights_into(model, weights, ckpt)
        return model.eval(), cfg
    tensors = model.trained_tensors()
    missing, unexpected = sorted(set(tensors) - set(weights)), sorted(set(weights) - set(tensors))
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {ckpt} does not match the config in {run / CONFIG_FILE}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, value in weights.items():
            tensors[name].copy_(value)
    return model.eval(), cfg


def _source_init_from(path: Path) -> Path | None:
    """The `init_from` of the run that `path` (a run folder, one of its checkpoints, or its export/)
    belongs to: what that run started from and did not save (its frozen parts)."""
    for folder in (path, path.parent, path.parent.parent):
        config = folder / CONFIG_FILE
        if config.is_file():
            source = OmegaConf.load(config).get("init_from")
            if not source:
                return None
            if not Path(source).exists():
                raise FileNotFoundError(f"{config} sets init_from={source}, which does not exist "
                                        f"(run from the folder training ran in, or restore that run)")
            return Path(source)
    return None


def init_from_run(model: Any, path: str | Path, _depth: int = 0) -> list[str]:
    """Copy another run's trained tensors into `model` where names and shapes match (e.g. LLaVA's
    stage-1 projector into stage 2); returns the names copied, fails if nothing matches.

    Parts this run freezes are filled too, buffers included: a trained from-scratch CNN frozen here
    needs its BatchNorm statistics, which are not parameters. When that run itself started from
    another (`init_from`, e.g. an imported model whose frozen weights it never saved), that one is
    applied first, so a run, its checkpoint or its export reproduce the run's model."""
    path = Path(path)
    source = _source_init_from(path) if _depth < 8 else None
    inherited = init_from_run(model, source, _depth + 1) if source is not None else []
    is_checkpoint = (path / WEIGHTS).exists() and not (path / CONFIG_FILE).exists()  # not an imported run
    copied: list[str] = []
    if _is_export(path):  # a run's export/ folder (adapter + lamm_weights)
        ckpt = path
        weights, copied = _export_weights(model, path)
    else:
        ckpt = path if is_checkpoint else _run_folder_of(path)[1]
        weights = _model_weights(ckpt)
    params = model.state_dict(keep_vars=True)  # every parameter and persistent buffer, by name
    with torch.no_grad():
        for name, value in weights.items():
            if name in params and params[name].shape == value.shape:
                params[name].copy_(value)
                copied.append(name)
    if not copied:
        raise ValueError(f"init_from: no parameter of {ckpt} matches this model (names or shapes differ)")
    return inherited + copied
