"""`hf_blip2`: a Hugging Face Blip2ForConditionalGeneration folder as a lamm run folder.

BLIP-2 is a ViT (its last layer after the post-layernorm, CLS kept) + the Q-Former (learned queries,
language projection) + a language model whose image-token embeddings are replaced by the projected
queries: lamm's hf_vision + qformer + prefix fusion + hf LLM. The tower and the LLM are written as
Hugging Face folders (`vision/`, `llm/`) tensor by tensor; the Q-Former's tensors keep their names.
Only decoder-only language models (OPT, ...) map onto lamm's LLM; a T5 BLIP-2 is refused.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch

from lamm.registry import CHECKPOINT_FORMATS
from lamm.zoo.hf_folders import save_hf_folder
from lamm.zoo.parts import checked_mapping, meta_module, meta_shapes, state_shapes, streamed
from lamm.zoo.plan import OUT, ImportPlan
from lamm.zoo.state import open_state

VISION_DIR = "vision"
LLM_DIR = "llm"
_DTYPES = ("float32", "bfloat16", "float16")
# The Q-Former's text branch (feed-forward for text tokens, word/position embeddings) serves BLIP-2's
# pre-training losses only; image-grounded generation never runs it.
_QFORMER_TEXT_ONLY = re.compile(r"qformer\.(encoder\.layer\.\d+\.(intermediate|output)\.|embeddings\.)")


def _prefixed(state: Any, prefix: str, module: torch.nn.Module, what: str,
              optional: Callable[[str], bool] = lambda name: False) -> dict[str, str]:
    """{`module`'s tensor name: `prefix` + name}, every key present (unless optional) and of its shape."""
    target = state_shapes(module)
    return checked_mapping(state, {name: prefix + name for name in target}, target, what, optional)


def blip2_overrides(qformer: Any, num_query_tokens: int, dtype: str | None) -> list[str]:
    """lamm-train overrides that rebuild a BLIP-2 model from the folders the importer writes.

    It fine-tunes as BLIP-2's second stage does: the tower and the LLM frozen, the Q-Former trained.
    """
    overrides = [
        "model/encoder=hf_clip_vit_l14_336",  # an hf_vision node; every key it sets is given here
        f"model.encoder.path={OUT}/{VISION_DIR}",
        "model.encoder.layer=-1",
        "model.encoder.select=full",
        "model.encoder.post_layernorm=true",
        "model.encoder.pad_to_square=false",
        "model/projector=qformer",
        f"model.projector.num_query_tokens={num_query_tokens}",
        f"model.projector.num_hidden_layers={qformer.num_hidden_layers}",
        f"model.projector.hidden_size={qformer.hidden_size}",
        f"model.projector.num_attention_heads={qformer.num_attention_heads}",
        f"model.projector.intermediate_size={qformer.intermediate_size}",
        f"model.projector.cross_attention_frequency={qformer.cross_attention_frequency}",
        f"model.projector.layer_norm_eps={float(qformer.layer_norm_eps)!r}",
        "model/fusion=prefix",
        "model/llm=hf",
        f"model.llm.path={OUT}/{LLM_DIR}",
        "model/policy=align",
        "data.template=blip2",  # `Question: {q} Answer:`, as BLIP-2 was prompted
    ]
    if dtype is not None:
        overrides += [f"model.llm.dtype={dtype}", f"model.encoder.dtype={dtype}"]
    return overrides


@CHECKPOINT_FORMATS.register("hf_blip2")
def import_hf_blip2(src: Path, dtype: str | None = None) -> ImportPlan:
    """A Blip2ForConditionalGeneration folder (config.json, safetensors, processor) -> hf_vision + qformer + prefix + LLM.

    Options: `dtype` (float32 | bfloat16 | float16) for the tower and the LLM (default: float32).
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    from lamm.projectors.qformer import QFormerProjector

    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"--option dtype={dtype}: expected one of {', '.join(_DTYPES)}")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(2, "hf_blip2 expects a Blip2ForConditionalGeneration folder with config.json", str(src))
    config = AutoConfig.from_pretrained(src)
    if config.model_type != "blip-2":
        raise ValueError(f"{src / 'config.json'}: model_type {config.model_type!r} is not a BLIP-2 model ('blip-2')")
    text = config.text_config
    if getattr(text, "is_encoder_decoder", False):
        raise ValueError(f"{src / 'config.json'}: this BLIP-2 has a {text.model_type} (encoder-decoder) language model; "
                         f"lamm imports BLIP-2 with decoder-only language models only (e.g. OPT)")
    image_token = getattr(config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(config, "image_token_index", None)

    state = open_state(src)
    vision_model = meta_module(lambda: transformers.Blip2VisionModel(config.vision_config))
    vision = _prefixed(state, "vision_model.", vision_model, "vision tower")
    llm_model = meta_module(lambda: AutoModelForCausalLM.from_config(text))
    tied = bool(getattr(text, "tie_word_embeddings", False))
    llm = _prefixed(state, "language_model.", llm_model, f"{text.model_type} language model",
                    optional=lambda name: tied and name == "lm_head.weight")
    qformer = config.qformer_config
    projector_target = meta_shapes(lambda: QFormerProjector(
        config.vision_config.hidden_size, text.hidden_size, num_query_tokens=config.num_query_tokens,
        num_hidden_layers=qformer.num_hidden_layers, hidden_size=qformer.hidden_size,
        num_attention_heads=qformer.num_attention_heads, intermediate_size=qformer.intermediate_size,
        cross_attention_frequency=qformer.cross_attention_frequency, layer_norm_eps=qformer.layer_norm_eps))
    projector_keys = checked_mapping(state, {name: name for name in projector_target}, projector_target, "Q-Former")

    # Check the whole checkpoint before anything is written: the folders' tensors are taken later, while
    # streaming; what neither part reads must be the Q-Former's text branch.
    state.skip([*vision.values(), *llm.values()])
    weights = {f"projectors.image.{name}": state.take(key) for name, key in projector_keys.items()}
    text_branch = [k for k in state.keys() if k not in state.consumed and _QFORMER_TEXT_ONLY.match(k)]
    state.skip(text_branch)
    state.finish()

    def write_folders(staging: Path) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        config.vision_config.architectures = [type(vision_model).__name__]
        save_hf_folder(staging / VISION_DIR, config.vision_config, streamed(state, vision),
                       AutoImageProcessor.from_pretrained(src))
        text.architectures = [type(llm_model).__name__]
        save_hf_folder(staging / LLM_DIR, text, streamed(state, llm), AutoTokenizer.from_pretrained(src))

    notes = {
        "vision": f"{config.vision_config.num_hidden_layers} blocks, last layer after post_layernorm, CLS kept",
        "qformer": f"{config.num_query_tokens} queries, {qformer.num_hidden_layers} layers",
        "language_model": text.model_type,
        "image_token_id": image_token,
        "qformer_text_branch_skipped": len(text_branch),
        "prompt": "template blip2: 'Question: {question} Answer:'",
    }
    return ImportPlan(overrides=blip2_overrides(qformer, config.num_query_tokens, dtype), weights=weights,
                      write_folders=write_folders, notes=notes)
