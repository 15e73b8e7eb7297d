"""`lamm export --to hf_llava RUN OUT`: a prefix run (hf_vision + 2-layer mlp + a Llama-family LLM, LoRA
merged) as a folder plain `LlavaForConditionalGeneration.from_pretrained` and `LlavaProcessor` load."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lamm.registry import EXPORT_FORMATS
from lamm.tokens import MEDIA_TOKENS, PLACEHOLDERS
from lamm.zoo.hf_folders import write_safetensors_shards
from lamm.zoo.state import CheckpointKeyError

IMAGE = "image"


def _refuse_other_architectures(model_cfg: Any, run: Path) -> None:
    """One line naming the first part of the run's model that LLaVA's architecture has no place for."""
    where = run / "config.yaml"
    modalities = set(model_cfg.encoder) if "name" not in model_cfg.encoder else {"image"}
    checks = [
        (model_cfg.encoder.get("name") == "hf_vision", f"model.encoder is {model_cfg.encoder.get('name', modalities)}"
                                                       ", LLaVA needs hf_vision"),
        (model_cfg.projector.get("name") == "mlp" and int(model_cfg.projector.get("depth", 2)) == 2
         and model_cfg.projector.get("hidden_dim") in (None, "null"),
         "model.projector is not a 2-layer mlp of the LLM's width (LLaVA's projector)"),
        (model_cfg.fusion.get("name") == "prefix",
         f"model.fusion is {model_cfg.fusion.get('name')}, LLaVA needs prefix"),
        (not model_cfg.encoder.get("post_layernorm", False), "model.encoder.post_layernorm is true (LLaVA reads "
                                                             "hidden states without the final norm)"),
        (model_cfg.encoder.get("image_size") is None, "model.encoder.image_size resizes the tower's input "
                                                      "(LLaVA's processor has no such option)"),
    ]
    for ok, reason in checks:
        if not ok:
            raise CheckpointKeyError(f"{where}: cannot export as hf_llava: {reason}")


def _full_tower(encoder: Any) -> torch.nn.Module:
    """The encoder's tower with every block and its final norm (hf_vision drops those it never reads),
    holding the run's weights for the blocks it kept."""
    from lamm.encoders.hf_vision import load_vision_tower

    tower = load_vision_tower(encoder.path, None)
    result = tower.load_state_dict(encoder.tower.state_dict(), strict=False)
    if result.unexpected_keys:
        raise CheckpointKeyError(f"{encoder.path}: the run's tower has tensors the folder's does not "
                                 f"({result.unexpected_keys[0]})")
    return tower


def _image_processor(encoder: Any) -> Any:
    """The tower's image processor; LLaVA's pad-to-square is LlavaImageProcessor's `do_pad`."""
    from transformers import LlavaImageProcessor

    processor = encoder.transform.processor
    if not encoder.transform.pad_to_square:
        return processor
    keep = ("size", "crop_size", "image_mean", "image_std", "resample", "do_resize", "do_center_crop",
            "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb")
    return LlavaImageProcessor(**{k: getattr(processor, k) for k in keep if getattr(processor, k, None) is not None},
                               do_pad=True)


@EXPORT_FORMATS.register("hf_llava")
def export_hf_llava(run: Path, staging: Path) -> None:
    """Write `run` into `staging` as a LlavaForConditionalGeneration folder with its LlavaProcessor."""
    from omegaconf import OmegaConf
    from transformers import LlavaConfig, LlavaProcessor

    from lamm.training.export import load_for_inference

    run = Path(run)
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise CheckpointKeyError(f"{run} is not a lamm run folder (no config.yaml)")
    _refuse_other_architectures(OmegaConf.load(config_file).model, run)
    model, _ = load_for_inference(run)
    llm = model.llm
    causal_lm = llm.peft_model.merge_and_unload() if llm.has_lora else llm.causal_lm
    if causal_lm.base_model_prefix != "model" or not hasattr(causal_lm, "lm_head"):
        raise CheckpointKeyError(f"{config_file}: cannot export as hf_llava: the LLM {type(causal_lm).__name__} "
                                 "is not Llama-family (a `model` decoder plus `lm_head`)")
    encoder = model.encoders[IMAGE]
    if encoder.num_prefix_tokens > 1 and encoder.select == "patch":
        raise CheckpointKeyError(f"{config_file}: cannot export as hf_llava: the tower has register tokens, "
                                 "LLaVA drops only a CLS token")
    tower = _full_tower(encoder)
    text_config = causal_lm.config
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    embed = causal_lm.get_input_embeddings().weight
    if not tied:  # the media tokens' own (trainable) table is their input embedding; tied rows also score them
        with torch.no_grad():
            ids = [llm.media_token_ids[t] for t in MEDIA_TOKENS]  # the order of media_token_embedding's rows
            embed[ids] = llm.media_token_embedding.to(embed.dtype)
    image_token = PLACEHOLDERS[IMAGE]
    strategy = "default" if encoder.select == "patch" and encoder.num_prefix_tokens == 1 else "full"
    projector = model.projectors[IMAGE]
    config = LlavaConfig(
        vision_config=tower.config.to_dict(), text_config=text_config.to_dict(),
        image_token_index=llm.media_token_ids[image_token], projector_hidden_act="gelu",
        vision_feature_layer=int(OmegaConf.load(config_file).model.encoder.layer),
        vision_feature_select_strategy=strategy, image_seq_length=encoder.num_tokens(),
        multimodal_projector_bias=projector.net[0].bias is not None, tie_word_embeddings=tied,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config.save_pretrained(staging)

    tensors = [(f"model.vision_tower.{k}", v) for k, v in tower.state_dict().items()]
    tensors += [(f"model.multi_modal_projector.linear_{i + 1}.{k}", v)
                for i, layer in enumerate((projector.net[0], projector.net[2])) for k, v in layer.state_dict().items()]
    for name, value in causal_lm.state_dict().items():
        if name.startswith("model."):
            tensors.append((f"model.language_model.{name[len('model.'):]}", value))
        elif name == "lm_head.weight" and not tied:
            tensors.append((name, value))
    write_safetensors_shards(staging, ((n, lambda v=v: v.detach()) for n, v in tensors))

    tokenizer = llm.tokenizer
    processor = LlavaProcessor(image_processor=_image_processor(encoder), tokenizer=tokenizer,
                               patch_size=tower.config.patch_size, vision_feature_select_strategy=strategy,
                               image_token=image_token, num_additional_image_tokens=encoder.num_prefix_tokens,
                               chat_template=getattr(tokenizer, "chat_template", None))
    processor.save_pretrained(staging)
