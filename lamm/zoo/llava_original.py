"""`llava_original`: checkpoints in the LLaVA repository's own layout, as lamm run folders.

Two shapes of it:
- a full model folder (LlavaLlamaForCausalLM: `config.json` with `mm_*` keys, LLaMA/Vicuna tensors plus
  `model.mm_projector.*`, and the tower as `model.vision_tower.vision_tower.*` when it was saved);
- a stage-1 projector file (`mm_projector.bin`, `config.json` beside it when there) on top of a base LLM
  folder (`--option llm=PATH`).
The tower's config and image processor come from `--option vision=PATH` (an HF CLIP folder), or from
`mm_vision_tower` when that is a local folder. Prompts follow LLaVA-1.5's `vicuna_v1` conversation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lamm.registry import CHECKPOINT_FORMATS
from lamm.zoo.hf_folders import save_hf_folder
from lamm.zoo.llava_parts import (LLAVA_V1_TEMPLATE, LLM_DIR, VISION_DIR, chat_template_for, llava_overrides,
                                  text_model_mapping, vision_tower_mapping, write_llm_folder)
from lamm.zoo.parts import streamed
from lamm.zoo.plan import ImportPlan
from lamm.zoo.state import CheckpointKeyError, StateReader, open_state

PROJECTOR_PREFIXES = ("model.mm_projector.", "mm_projector.")
TOWER_PREFIX = "model.vision_tower.vision_tower."
# LLaVA's model types and the transformers LM each one extends.
LLM_TYPES = {"llava_llama": "llama", "llava_mistral": "mistral", "llama": "llama", "mistral": "mistral"}
SELECT_FEATURES = {"patch": "patch", "cls_patch": "full"}


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointKeyError(f"{path}: cannot read it as JSON ({exc})") from None


def _projector(state: StateReader, kind: str, width: int, hidden: int, where: str) -> tuple[dict, list[str]]:
    """lamm's projector tensors and overrides for LLaVA's `mm_projector_type` (`linear`, `mlp<N>x_gelu`)."""
    prefix = next((p for p in PROJECTOR_PREFIXES if state.keys_with_prefix(p)), None)
    if prefix is None:
        raise CheckpointKeyError(f"missing key 'model.mm_projector.*' in {state.source}: no LLaVA projector")
    if kind == "linear":
        weights = {"projectors.image.proj.weight": state.take(prefix + "weight", (hidden, width)),
                   "projectors.image.proj.bias": state.take(prefix + "bias", (hidden,))}
        return weights, ["model/projector=linear"]
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match is None:
        raise CheckpointKeyError(f"{where}: mm_projector_type {kind!r} is not one lamm builds (linear, mlp<N>x_gelu)")
    depth = int(match.group(1))
    weights = {}
    for i in range(depth):  # nn.Sequential(Linear, GELU, Linear, ...): the Linears sit at even indices
        rows, cols = hidden, (width if i == 0 else hidden)
        weights[f"projectors.image.net.{2 * i}.weight"] = state.take(f"{prefix}{2 * i}.weight", (rows, cols))
        weights[f"projectors.image.net.{2 * i}.bias"] = state.take(f"{prefix}{2 * i}.bias", (rows,))
    return weights, ["model/projector=mlp", f"model.projector.depth={depth}", "model.projector.bias=true"]


def _vision(options_vision: str | None, mm: dict[str, Any], where: str):
    """(vision config, image processor, the folder's tensors) of the tower the checkpoint names."""
    from transformers import AutoConfig, AutoImageProcessor

    path = options_vision or mm.get("mm_vision_tower")
    if not path or not Path(path).expanduser().is_dir():
        raise CheckpointKeyError(f"{where}: mm_vision_tower {mm.get('mm_vision_tower')!r} is not a local folder; "
                                 "give the tower's HF folder with --option vision=PATH")
    path = Path(path).expanduser()
    config = AutoConfig.from_pretrained(path)
    config = getattr(config, "vision_config", None) or config
    return config, AutoImageProcessor.from_pretrained(path), path


@CHECKPOINT_FORMATS.register("llava_original")
def import_llava_original(src: Path, llm: str | None = None, vision: str | None = None,
                          dtype: str | None = None) -> ImportPlan:
    """A LLaVA-repository checkpoint -> hf_vision + linear/mlp + prefix + hf LLM.

    Options: `vision` (the CLIP tower's HF folder; default `mm_vision_tower`), `llm` (the base LLM folder,
    needed for a projector-only file), `dtype` (float32, bfloat16, float16).
    """
    from transformers import AutoConfig, AutoTokenizer

    src = Path(src)
    projector_only = src.is_file()
    config_path = (src.parent if projector_only else src) / "config.json"
    if not projector_only and not config_path.is_file():
        raise CheckpointKeyError(f"{src} has no config.json: llava_original needs a LLaVA model folder "
                                 "or an mm_projector.bin file")
    mm = _read_config(config_path) if config_path.is_file() else {}
    where = str(config_path if config_path.is_file() else src)
    state = open_state(src)
    if projector_only:
        if not llm:
            raise CheckpointKeyError(f"{src} holds only a projector: give the base LLM folder with --option llm=PATH")
        llm_path = Path(llm).expanduser()
        if not (llm_path / "config.json").is_file():
            raise CheckpointKeyError(f"--option llm={llm}: no config.json there (an HF causal-LM folder is needed)")
        text_config = AutoConfig.from_pretrained(llm_path)
        text_state, tokenizer_source = open_state(llm_path), llm_path
    else:
        model_type = LLM_TYPES.get(mm.get("model_type", ""))
        if model_type is None:
            raise CheckpointKeyError(f"{config_path}: model_type {mm.get('model_type')!r} is not a LLaVA LLaMA/Mistral "
                                     f"model ({', '.join(LLM_TYPES)})")
        text_config = AutoConfig.for_model(model_type, **{k: v for k, v in mm.items() if not _llava_only(k)})
        text_state, tokenizer_source = state, src

    if mm.get("mm_use_im_start_end"):
        raise CheckpointKeyError(f"{where}: mm_use_im_start_end wraps images in extra tokens; lamm's prefix "
                                 "fusion writes the image tokens alone")
    vision_config, image_processor, vision_path = _vision(vision, mm, where)
    layer = int(mm.get("mm_vision_select_layer", -2))
    feature = mm.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise CheckpointKeyError(f"{where}: mm_vision_select_feature {feature!r} is not one of {list(SELECT_FEATURES)}")
    kind = mm.get("mm_projector_type", "linear")
    width, hidden = vision_config.hidden_size, text_config.hidden_size
    if "mm_hidden_size" in mm and int(mm["mm_hidden_size"]) != width:
        raise CheckpointKeyError(f"{where}: mm_hidden_size {mm['mm_hidden_size']} differs from the tower's width "
                                 f"{width} ({vision_path})")
    weights, projector_overrides = _projector(state, kind, width, hidden, where)

    if state.keys_with_prefix(TOWER_PREFIX):  # a tower saved with the model (fine-tuned or merged)
        tower_state, tower_prefix = state, TOWER_PREFIX
    else:
        tower_state, tower_prefix = open_state(vision_path), ""
    vision_map = vision_tower_mapping(tower_state, tower_prefix, vision_config)
    if projector_only:
        text_map = text_model_mapping(text_state, lambda _: {k: k for k in text_state.keys()}, text_config)
        text_state.skip(text_map.values())
        text_state.finish()
    else:
        skip = PROJECTOR_PREFIXES + (TOWER_PREFIX,)
        text_map = text_model_mapping(state, lambda _: {k: k for k in state.keys() if not k.startswith(skip)},
                                      text_config)
    state.skip([*text_map.values(), *(vision_map.values() if tower_state is state else [])])
    state.finish()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    template = chat_template_for(tokenizer, LLAVA_V1_TEMPLATE)

    def write_folders(staging: Path) -> None:
        save_hf_folder(staging / VISION_DIR, vision_config, streamed(tower_state, vision_map), image_processor)
        write_llm_folder(staging / LLM_DIR, text_config, tokenizer, template, streamed(text_state, text_map))

    overrides = llava_overrides(layer, SELECT_FEATURES[feature], True, dtype)
    overrides = [o for o in overrides if not o.startswith("model.projector.") and o != "model/projector=mlp"]
    overrides += projector_overrides
    # LLaVA-1.5 pads images to a square with the mean colour (`image_aspect_ratio: pad`).
    pad = mm.get("image_aspect_ratio") == "pad"
    overrides = [f"model.encoder.pad_to_square={str(pad).lower()}" if o.startswith("model.encoder.pad_to_square")
                 else o for o in overrides]
    notes = {"layout": "projector file on a base LLM" if projector_only else "full model folder",
             "mm_projector_type": kind, "mm_vision_select_layer": layer, "mm_vision_select_feature": feature,
             "vision_tower": str(vision_path), "tower_from": "checkpoint" if tower_state is state else "vision folder",
             "image_aspect_ratio": mm.get("image_aspect_ratio"), "chat_template": "LLaVA-1.5 vicuna_v1"}
    return ImportPlan(overrides, weights, write_folders, notes)


def _llava_only(key: str) -> bool:
    """Config keys LLaVA adds to its LLM's config (they mean nothing to the LLM itself)."""
    return key.startswith(("mm_", "tune_mm", "freeze_mm", "unfreeze_mm", "tokenizer_")) or key in (
        "model_type", "architectures", "image_aspect_ratio", "image_grid_pinpoints", "use_mm_proj",
        "transformers_version", "_name_or_path")
