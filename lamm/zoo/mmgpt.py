"""`mmgpt`: a Multimodal-GPT LoRA checkpoint applied on top of an imported OpenFlamingo.

    lamm import openflamingo checkpoint.pt OF_RUN --option llm=LLAMA_FOLDER --option vision=CLIP_FILE
    lamm import mmgpt mmgpt-lora-v0-release.pt OUT --option base=OF_RUN

Multimodal-GPT wraps OpenFlamingo's language model (the LLM with its gated cross-attention blocks
slotted in) in peft LoRA and saves only the LoRA tensors (`get_checkpoint`: the trainable ones):

    [module.]lang_encoder.base_model.model.<layers>.<i>.decoder_layer.<module>.lora_{A,B}[.default].weight
    [module.]lang_encoder.base_model.model.<layers>.<i>.gated_cross_attn_layer.<module>.lora_{A,B}[.default].weight

with `<module>` the LLM's attention projections (q/k/v/o_proj; any LLM Linear is accepted) and the
cross-attention's attn.to_q, attn.to_kv, attn.to_out and its feed-forward ff.1, ff.3. The rank comes
from the tensors. Beside them it pickles its mmengine training config (`tuning_config`): those two
classes are read as inert data, never constructed (any other pickled object is refused), and give
lora_alpha / lora_dropout unless the options do (default 16 and 0.0, its configs/lora_config.py).

OUT reuses the base import: its overrides (the base's `llm/` and `vision/` folders stay where they
are, so keep the base folder) and its weights, plus LoRA on the LLM and on the fusion (model/lora
with fusion_targets, model/policy training the LoRA only, as Multimodal-GPT does).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lamm.registry import CHECKPOINT_FORMATS
from lamm.zoo.plan import ImportPlan
from lamm.zoo.state import TORCH_FILES, CheckpointKeyError, StateReader, open_state
from lamm.zoo.writer import IMPORTED_WEIGHTS, read_import_record

PREFIX = "lang_encoder.base_model.model."  # peft's PeftModel around OpenFlamingo's lang_encoder
KEY = re.compile(r"(?P<layers>.+?)\.(?P<layer>\d+)\.(?P<part>decoder_layer|gated_cross_attn_layer)\."
                 r"(?P<module>.+)\.lora_(?P<ab>[AB])(?P<adapter>\.default)?\.weight")
# OpenFlamingo's cross-attention block modules -> lamm's GatedCrossAttentionBlock modules.
XATTN_MODULES = {"attn.to_q": "to_q", "attn.to_kv": "to_kv", "attn.to_out": "to_out", "ff.1": "ff_in", "ff.3": "ff_out"}
DEFAULT_ALPHA = 16.0  # Multimodal-GPT's configs/lora_config.py: lora_r=16, lora_alpha=16, lora_dropout=0.0
DEFAULT_DROPOUT = 0.0


class PickledRecord:
    """Stands in for mmengine's `Config` when unpickling: keeps the state it is given, runs no code of it."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


# The classes of Multimodal-GPT's pickled training config -> inert stand-ins (ConfigDict is a dict).
CONFIG_CLASSES: dict[str, type] = {"mmengine.config.config.ConfigDict": OrderedDict,
                                   "mmengine.config.config.Config": PickledRecord,
                                   "builtins.set": set, "builtins.frozenset": frozenset}


class LoraTensor:
    """One LoRA matrix of the checkpoint and where it goes in lamm."""

    def __init__(self, key: str, match: re.Match) -> None:
        self.key = key
        self.layers, self.layer = match["layers"], int(match["layer"])
        self.in_fusion = match["part"] == "gated_cross_attn_layer"
        self.module, self.ab = match["module"], match["ab"]
        if self.in_fusion and self.module not in XATTN_MODULES:
            raise CheckpointKeyError(f"unexpected key '{key}': Multimodal-GPT's cross-attention LoRA is on "
                                     f"{', '.join(XATTN_MODULES)}, not '{self.module}'")
        self.target = XATTN_MODULES[self.module] if self.in_fusion else self.module.rsplit(".", 1)[-1]

    @property
    def base_weight(self) -> str:
        """The lamm (fusion) or Hugging Face (LLM) name of the Linear weight this LoRA adapts."""
        if self.in_fusion:
            return f"fusion.blocks.{self.layer}.{self.target}.weight"
        return f"{self.layers}.{self.layer}.{self.module}.weight"

    @property
    def lamm_name(self) -> str:
        where = (f"fusion.blocks.{self.layer}.{self.target}" if self.in_fusion
                 else f"llm.causal_lm.{self.layers}.{self.layer}.{self.module}")
        return f"{where}.lora_{self.ab}.default.weight"

    @property
    def partner(self) -> str:
        """The key of the other matrix of this LoRA pair (named in the checkpoint's own layout)."""
        other = "B" if self.ab == "A" else "A"
        return self.key.replace(f".lora_{self.ab}.", f".lora_{other}.")


@CHECKPOINT_FORMATS.register("mmgpt")
def import_mmgpt(src: Path, base: str | None = None, alpha: str | None = None,
                 dropout: str | None = None) -> ImportPlan:
    if not base:
        raise ValueError("mmgpt: --option base=FOLDER is required (the OpenFlamingo it was trained on, "
                         "imported with `lamm import openflamingo`)")
    base_dir = Path(base).expanduser().resolve()
    record = read_import_record(base_dir)
    if record is None or not (base_dir / IMPORTED_WEIGHTS).is_file():
        raise FileNotFoundError(2, "mmgpt: base is not an imported run folder (import.json and "
                                   f"{IMPORTED_WEIGHTS}; make it with `lamm import openflamingo`)", str(base_dir))
    state, config = _open_checkpoint(Path(src))
    settings = _lora_settings(config)
    alpha_value = _number("alpha", alpha) if alpha is not None else float(settings.get("lora_alpha", DEFAULT_ALPHA))
    dropout_value = (_number("dropout", dropout) if dropout is not None
                     else float(settings.get("lora_dropout", DEFAULT_DROPOUT)))
    tensors = _lora_tensors(state, record)
    base_weights = load_file(str(base_dir / IMPORTED_WEIGHTS))
    shapes = _base_shapes(base_dir, base_weights)
    rank = _rank(state, tensors[0])
    if "lora_r" in settings and int(settings["lora_r"]) != rank:
        raise CheckpointKeyError(f"{src}: its tuning_config says lora_r={settings['lora_r']}, but '{tensors[0].key}' "
                                 f"has rank {rank}")
    weights: dict[str, torch.Tensor] = {}
    for t in tensors:
        if t.partner not in state:
            raise CheckpointKeyError(f"missing key '{t.partner}' in {state.source} (the other half of '{t.key}')")
        if _rank(state, t) != rank:
            raise CheckpointKeyError(f"key '{t.key}' in {state.source} has shape {list(state.shape(t.key))}: rank "
                                     f"{_rank(state, t)}, but '{tensors[0].key}' has rank {rank}")
        weights[t.lamm_name] = state.take(t.key, _expected(t, shapes, rank, state))
    state.finish()

    llm_targets = sorted({t.target for t in tensors if not t.in_fusion})
    fusion_targets = sorted({t.target for t in tensors if t.in_fusion})
    adapted = {("fusion" if t.in_fusion else "llm", t.target) for t in tensors}
    for name, value in base_weights.items():  # LoRA-wrapped Linear layers keep their weight in `base_layer`
        weights[_wrapped_name(name, adapted)] = value
    overrides = [
        *record["overrides"],
        "model/lora=r16_mmgpt", f"model.lora.r={rank}", f"model.lora.alpha={alpha_value!r}",
        f"model.lora.dropout={dropout_value!r}", f"model.lora.targets=[{','.join(llm_targets)}]",
        f"model.lora.fusion_targets=[{','.join(fusion_targets)}]",
        # Multimodal-GPT trains its LoRA only (everything else frozen, the gates included).
        "model.policy.encoder=frozen", "model.policy.projector=frozen", "model.policy.media_tokens=frozen",
        f"model.policy.llm={'lora' if llm_targets else 'frozen'}",
        f"model.policy.fusion={'lora' if fusion_targets else 'frozen'}",
        "data.template=mmgpt",  # Multimodal-GPT's own prompt text (datasets/templates.py)
    ]
    given = "options" if alpha is not None or dropout is not None else "tuning_config" if settings else "defaults"
    notes = {"base": str(base_dir), "base_format": record.get("format"), "rank": rank, "alpha": alpha_value,
             "dropout": dropout_value, "lora_settings_from": given, "llm_targets": llm_targets,
             "fusion_targets": fusion_targets, "lora_tensors": len(tensors),
             "note": "the LLM and vision folders are the base import's: keep it"}
    return ImportPlan(overrides=overrides, weights=weights, notes=notes)


def _open_checkpoint(src: Path) -> tuple[StateReader, Any]:
    """The checkpoint's tensors, and Multimodal-GPT's pickled training config (None when absent).

    A `.pt` whose only pickled classes are that config's is loaded weights-only with inert stand-ins
    for them (tensors must be all the `model_state_dict` holds); anything else goes to the strict reader.
    """
    if src.is_file() and src.suffix in TORCH_FILES:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(src))
        except Exception:  # not a zip checkpoint: the strict reader names what is wrong
            unsafe = []
        if unsafe and all(name in CONFIG_CLASSES for name in unsafe):
            try:
                with torch.serialization.safe_globals([(CONFIG_CLASSES[name], name) for name in unsafe]):
                    saved = torch.load(src, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch's message, first line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointKeyError(f"cannot read {src} safely (weights only, no pickled objects): "
                                         f"{first}") from None
            tensors = saved.get("model_state_dict") if isinstance(saved, dict) else None
            if not isinstance(tensors, dict):
                raise CheckpointKeyError(f"{src} holds a pickled training config but no 'model_state_dict' of tensors")
            for key, value in tensors.items():
                if not isinstance(value, torch.Tensor):
                    raise CheckpointKeyError(f"key '{key}' in {src} is a {type(value).__name__}, not a tensor")
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            return StateReader(src, shapes, tensors.__getitem__), saved.get("tuning_config")
    return open_state(src), None


def _lora_settings(config: Any) -> dict[str, Any]:
    """The first mapping holding `lora_alpha` inside the pickled config's data (its tuning_config), or {}."""
    todo, seen = [config], 0
    while todo and seen < 10_000:
        item = todo.pop(0)
        seen += 1
        if isinstance(item, PickledRecord):
            todo.append(item.state)
        elif isinstance(item, dict):
            if "lora_alpha" in item:
                return {k: item[k] for k in ("lora_r", "lora_alpha", "lora_dropout") if k in item}
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return {}


def _number(option: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"mmgpt: --option {option}={value!r} is not a number") from None


def _lora_tensors(state: StateReader, record: dict[str, Any]) -> list[LoraTensor]:
    """Every LoRA matrix of the checkpoint (with or without DDP's `module.` prefix)."""
    keys = state.keys()
    strip = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    layers_path = (record.get("notes") or {}).get("decoder_layers")  # recorded by the openflamingo importer
    tensors = []
    for key in keys:
        name = key[len(strip):]
        match = KEY.fullmatch(name[len(PREFIX):]) if name.startswith(PREFIX) else None
        if match is None:
            continue  # left for finish(), which names it
        if layers_path is not None and match["layers"] != layers_path:
            raise CheckpointKeyError(f"key '{key}' in {state.source} is under '{match['layers']}', but the base "
                                     f"LLM's decoder layers are '{layers_path}' (a checkpoint of another LLM family)")
        tensors.append(LoraTensor(key, match))
    if not tensors:
        example = f"{strip}{PREFIX}{layers_path or 'model.layers'}.3.decoder_layer.self_attn.q_proj.lora_A.weight"
        raise CheckpointKeyError(f"{state.source} holds no Multimodal-GPT LoRA tensors (e.g. '{example}')")
    return tensors


def _rank(state: StateReader, t: LoraTensor) -> int:
    shape = state.shape(t.key)
    if len(shape) != 2:
        raise CheckpointKeyError(f"key '{t.key}' in {state.source} has shape {list(shape)}, not a LoRA matrix")
    return shape[0] if t.ab == "A" else shape[1]


def _base_shapes(base_dir: Path, base_weights: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes of the Linear weights LoRA may adapt: the base's fusion tensors and, when the base's LLM
    is a Hugging Face folder, that folder's tensors (read from the file headers only)."""
    from omegaconf import OmegaConf

    shapes = {name: tuple(value.shape) for name, value in base_weights.items()}
    llm_path = OmegaConf.load(base_dir / "config.yaml").model.llm.get("path")
    if llm_path and Path(llm_path).is_dir():
        llm = open_state(llm_path)
        shapes.update({key: llm.shape(key) for key in llm.keys()})
    return shapes


def _expected(t: LoraTensor, shapes: dict[str, tuple[int, ...]], rank: int,
              state: StateReader) -> tuple[int, ...] | None:
    """lora_A is [rank, in], lora_B [out, rank] of the adapted Linear's [out, in] weight."""
    shape = shapes.get(t.base_weight)
    if shape is None:
        if t.in_fusion:
            raise CheckpointKeyError(f"key '{t.key}' in {state.source} adapts cross-attention layer {t.layer}, "
                                     f"which the base has not ('{t.base_weight}')")
        return None  # an LLM without a folder (e.g. a built-in random one): the import's verification checks it
    out_features, in_features = shape
    return (rank, in_features) if t.ab == "A" else (out_features, rank)


def _wrapped_name(name: str, adapted: set[tuple[str, str]]) -> str:
    """`...<module>.weight` -> `...<module>.base_layer.weight` when peft wraps that module in LoRA."""
    module, _, leaf = name.rpartition(".")
    part = "fusion" if name.startswith("fusion.") else "llm" if name.startswith("llm.") else None
    if part is None or (part, module.rsplit(".", 1)[-1]) not in adapted:
        return name
    return f"{module}.base_layer.{leaf}"
