"""What every LLaVA layout shares: the lamm architecture it becomes, and its parts written as HF folders.

A LLaVA model is an HF vision tower + a 2-layer GELU MLP + prefix fusion + a causal LM. The tower and
the LM are written as plain Hugging Face folders (`vision/`, `llm/`) tensor by tensor, named as the
installed transformers builds them (checked on the meta device, so a 7B layout costs no memory).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from lamm.zoo.hf_folders import save_hf_folder
from lamm.zoo.parts import check_shape, checked_mapping, meta_module, meta_shapes, state_shapes
from lamm.zoo.plan import OUT
from lamm.zoo.state import CheckpointKeyError, StateReader

VISION_DIR = "vision"
LLM_DIR = "llm"
_DTYPES = ("float32", "bfloat16", "float16")
# Turns string message contents into a text part, for chat templates written for typed contents
# ([{"type": "image"}, {"type": "text", ...}]); lamm's prompts carry the image marker inside the text.
_TYPED_CONTENT_PREAMBLE = (
    "{%- set lamm_ns = namespace(messages=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}"
    "{%- set part = {'type': 'text', 'text': m['content']} -%}"
    "{%- set lamm_ns.messages = lamm_ns.messages + [{'role': m['role'], 'content': [part]}] -%}"
    "{%- else -%}{%- set lamm_ns.messages = lamm_ns.messages + [m] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = lamm_ns.messages -%}"
)


def llava_overrides(layer: int, select: str, projector_bias: bool, dtype: str | None) -> list[str]:
    """lamm-train overrides that rebuild a LLaVA model from the folders an importer writes.

    The imported model fine-tunes as LLaVA-1.5's stage 2 does (frozen tower, trained projector, LLM
    through LoRA) and renders prompts with the chat template written into `llm/`.
    """
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"--option dtype={dtype}: expected one of {', '.join(_DTYPES)}")
    overrides = [
        "model/encoder=hf_clip_vit_l14_336",
        f"model.encoder.path={OUT}/{VISION_DIR}",
        f"model.encoder.layer={layer}",
        f"model.encoder.select={select}",
        "model.encoder.pad_to_square=false",  # the checkpoint's image processor decides the pixels
        "model/projector=mlp",
        "model.projector.depth=2",
        f"model.projector.bias={str(projector_bias).lower()}",
        "model/fusion=prefix",
        "model/llm=hf",
        f"model.llm.path={OUT}/{LLM_DIR}",
        "model/policy=lora",
        "data.template=chat",
        "data.system_prompt=none",
    ]
    if dtype is not None:
        overrides += [f"model.llm.dtype={dtype}", f"model.encoder.dtype={dtype}"]
    return overrides


def strip_vision_model(name: str) -> str:
    """A tower's tensor name without the `vision_model.` wrapper older transformers versions add."""
    return name.removeprefix("vision_model.")


def vision_tower_mapping(state: StateReader, prefix: str, vision_config: Any) -> dict[str, str]:
    """{tower tensor name as transformers builds it: checkpoint key} for every tower tensor under `prefix`,
    shapes checked; a tower tensor the checkpoint lacks is a missing key."""
    from transformers import AutoModel

    target = meta_shapes(lambda: AutoModel.from_config(vision_config))
    by_plain = {strip_vision_model(name): name for name in target}
    mapping: dict[str, str] = {}
    for key in state.keys_with_prefix(prefix):
        plain = strip_vision_model(key[len(prefix):])
        if plain in by_plain:
            name = by_plain[plain]
            check_shape(state, key, target[name])
            mapping[name] = key
    for name in target:
        if name not in mapping:
            raise CheckpointKeyError(f"missing key '{prefix}{name}' in {state.source} (the vision tower's "
                                     f"{vision_config.model_type} layout needs it)")
    return mapping


def text_model_mapping(state: StateReader, propose: Callable[[str], dict[str, str]],
                       text_config: Any) -> dict[str, str]:
    """{causal-LM tensor name: checkpoint key}, checked against the causal LM transformers builds from
    `text_config`. `propose(base_model_prefix)` gives the layout's {causal-LM name: checkpoint key}
    (the prefix is `model` for Llama-family LMs). A tied LM head may be absent."""
    from transformers import AutoModelForCausalLM

    causal_lm = meta_module(lambda: AutoModelForCausalLM.from_config(text_config))
    target = state_shapes(causal_lm)
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    return checked_mapping(state, propose(causal_lm.base_model_prefix), target, "language model",
                           optional=lambda name: tied and name.endswith("lm_head.weight"))


def chat_template_for(tokenizer: Any, template: str | None) -> str | None:
    """The checkpoint's chat template as lamm renders with it: string message contents accepted by
    templates written for typed contents, and BOS written when the tokenizer adds it itself (HF's
    processor tokenizes the rendered prompt with special tokens; lamm's chat template writes them)."""
    if not template:
        return None
    if "'type'" in template or '"type"' in template:
        template = _TYPED_CONTENT_PREAMBLE + template
    if "bos_token" not in template and _adds_bos(tokenizer):
        template = "{{- bos_token -}}" + template
    return template


# LLaVA-1.5's conversation layout (its `vicuna_v1`: system prompt, `USER: ... ASSISTANT: ...</s>`) as a
# chat template for checkpoints that carry none; a system message replaces the default system prompt.
# (BOS is added by `chat_template_for` when the tokenizer adds it, as LLaVA's LLaMA tokenizer does.)
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
LLAVA_V1_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '" + LLAVA_V1_SYSTEM.replace("'", "\\'") + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- if system -%}{{ system + ' ' }}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + m['content'] + eos_token }}"
    "{%- else -%}{{ 'USER: ' + m['content'] + ' ' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id \
        and len(ids) > len(tokenizer("a", add_special_tokens=False)["input_ids"])


def write_llm_folder(folder: Path, text_config: Any, tokenizer: Any, chat_template: str | None,
                     tensors: Iterable[tuple[str, Callable[[], torch.Tensor]]]) -> None:
    """An HF causal-LM folder (config, tokenizer with its chat template, weights) that `model/llm=hf` loads."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    save_hf_folder(folder, text_config, tensors, tokenizer)
