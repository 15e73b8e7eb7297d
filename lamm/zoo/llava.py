"""`hf_llava`: a Hugging Face LlavaForConditionalGeneration folder (llava-hf layout) as a lamm run folder.

The tower becomes `hf_vision` on `vision/` (with the checkpoint's image processor), the projector lamm's
`mlp`, the LM an HF folder `llm/` (text config, tokenizer, the chat template). LLaVA-hf expands its image
token into one token per image feature; lamm's prefix fusion writes as many placeholders, and the
image token is lamm's `<image>` placeholder whenever the checkpoint names it so (llava-hf does).
"""
from __future__ import annotations

from pathlib import Path

from lamm.registry import CHECKPOINT_FORMATS
from lamm.zoo.hf_folders import save_hf_folder
from lamm.zoo.llava_parts import (LLAVA_V1_TEMPLATE, LLM_DIR, VISION_DIR, chat_template_for, llava_overrides,
                                  text_model_mapping, vision_tower_mapping, write_llm_folder)
from lamm.zoo.parts import streamed
from lamm.zoo.plan import ImportPlan
from lamm.zoo.state import CheckpointKeyError, open_state

PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")
TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")
# transformers >= 4.52 saves `model.language_model.*` + `lm_head.*`; older ones `language_model.model.*`.
NEW_TEXT_PREFIX, OLD_TEXT_PREFIX = "model.language_model.", "language_model."


def _config(src: Path):
    from transformers import AutoConfig

    if not (src / "config.json").is_file():
        raise CheckpointKeyError(f"{src} has no config.json: hf_llava needs a LlavaForConditionalGeneration folder")
    config = AutoConfig.from_pretrained(src)
    if config.model_type != "llava":
        raise CheckpointKeyError(f"{src / 'config.json'}: model_type is {config.model_type!r}, hf_llava reads 'llava'")
    if not isinstance(config.vision_feature_layer, int):
        raise CheckpointKeyError(f"{src / 'config.json'}: vision_feature_layer {config.vision_feature_layer} "
                                 "concatenates several layers; lamm's hf_vision reads one")
    if config.projector_hidden_act != "gelu":
        raise CheckpointKeyError(f"{src / 'config.json'}: projector_hidden_act {config.projector_hidden_act!r}; "
                                 "lamm's mlp projector uses exact GELU ('gelu')")
    return config


def _select(config, src: Path) -> str:
    """hf_vision's `select` for LLaVA's strategy: `default` drops the CLS token, `full` keeps every token."""
    strategy = config.vision_feature_select_strategy
    if strategy == "full":
        return "full"
    if strategy != "default":
        raise CheckpointKeyError(f"{src / 'config.json'}: unknown vision_feature_select_strategy {strategy!r}")
    if config.vision_config.model_type not in ("clip_vision_model", "clip"):
        # LLaVA's `default` drops the first token whatever it is; only a CLS-first tower means "patch tokens".
        raise CheckpointKeyError(f"{src / 'config.json'}: vision_feature_select_strategy 'default' on a "
                                 f"{config.vision_config.model_type} tower (no CLS token to drop)")
    return "patch"


def _text_keys(keys: list[str], base_prefix: str) -> dict[str, str]:
    """{causal-LM name: checkpoint key} for either llava-hf text layout."""
    out: dict[str, str] = {}
    for key in keys:
        if key.startswith(NEW_TEXT_PREFIX):
            out[f"{base_prefix}.{key[len(NEW_TEXT_PREFIX):]}"] = key
        elif key.startswith("lm_head."):
            out[key] = key
        elif key.startswith(OLD_TEXT_PREFIX):
            out[key[len(OLD_TEXT_PREFIX):]] = key
    return out


@CHECKPOINT_FORMATS.register("hf_llava")
def import_hf_llava(src: Path, dtype: str | None = None) -> ImportPlan:
    """A LlavaForConditionalGeneration folder -> hf_vision + mlp + prefix + hf LLM.

    Options: `dtype` (float32, bfloat16, float16) for the LLM and tower; default float32 for the LLM.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    src = Path(src)
    config = _config(src)
    select = _select(config, src)
    state = open_state(src)
    keys = state.keys()
    projector = next((p for p in PROJECTOR_PREFIXES if f"{p}linear_1.weight" in state), None)
    tower = next((p for p in TOWER_PREFIXES if state.keys_with_prefix(p)), None)
    if projector is None or tower is None:
        what = "multi_modal_projector.linear_1.weight" if projector is None else "vision_tower.*"
        raise CheckpointKeyError(f"missing key '{what}' in {state.source}: not a LLaVA checkpoint")

    vision_config, text_config = config.vision_config, config.text_config
    vision = vision_tower_mapping(state, tower, vision_config)
    text = text_model_mapping(state, lambda base_prefix: _text_keys(keys, base_prefix), text_config)

    bias = bool(getattr(config, "multimodal_projector_bias", True))
    hidden, width = text_config.hidden_size, vision_config.hidden_size
    shapes = {"linear_1.weight": (hidden, width), "linear_1.bias": (hidden,),
              "linear_2.weight": (hidden, hidden), "linear_2.bias": (hidden,)}
    names = {"linear_1": "projectors.image.net.0", "linear_2": "projectors.image.net.2"}
    weights = {}
    for part, shape in shapes.items():
        if part.endswith("bias") and not bias:
            continue
        layer, _, kind = part.partition(".")
        weights[f"{names[layer]}.{kind}"] = state.take(projector + part, shape)
    # The tower's and LM's tensors are read later, one shard at a time, while their folders are written.
    state.skip([*vision.values(), *text.values()])
    state.finish()

    tokenizer = AutoTokenizer.from_pretrained(src)
    try:
        image_processor = AutoImageProcessor.from_pretrained(src)
    except OSError:
        raise CheckpointKeyError(f"{src} has no image processor (preprocessor_config.json or processor_config.json):"
                                 " the imported tower needs the checkpoint's own") from None
    try:
        template = AutoProcessor.from_pretrained(src).chat_template
    except (OSError, ValueError, TypeError):  # a folder without processor files: the tokenizer's template
        template = None
    template = template or getattr(tokenizer, "chat_template", None)
    image_token = tokenizer.convert_ids_to_tokens(int(config.image_token_index))
    lamm_template = chat_template_for(tokenizer, template or LLAVA_V1_TEMPLATE)

    def write_folders(staging: Path) -> None:
        save_hf_folder(staging / VISION_DIR, vision_config, streamed(state, vision), image_processor)
        write_llm_folder(staging / LLM_DIR, text_config, tokenizer, lamm_template, streamed(state, text))

    notes = {
        "vision_tower": vision_config.model_type, "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy, "image_token": image_token,
        "language_model": text_config.model_type, "tensors": len(keys),
        "chat_template": "the checkpoint's" if template else "none in the checkpoint: LLaVA-1.5's vicuna_v1 layout",
    }
    return ImportPlan(llava_overrides(config.vision_feature_layer, select, bias, dtype), weights,
                      write_folders, notes)
