"""`hf_idefics`: an `IdeficsForVisionText2Text` folder (HuggingFaceM4 layout) as lamm parts.

IDEFICS is a CLIP-style ViT, a perceiver resampler, gated cross-attention blocks and a Llama
decoder; each maps onto an existing lamm part with options, none is copied:

- vision tower -> an HF `CLIPVisionModel` folder (`vision/`) read by the `hf_vision` encoder with
  `layer: -1, select: full` (IDEFICS reads `last_hidden_state`, CLS kept, before `post_layernorm`),
  and a `CLIPImageProcessor` that resizes to a square without cropping, as IDEFICS's processor does;
- resampler -> the `perceiver` projector with `qk_norm`, `ff_act: relu`, `out_proj: false`;
- gated cross-attention -> `gated_xattn` with `placement: first`, RMS norms, SwiGLU, float or
  vector gates and keys/values from media of the vision width;
- decoder -> an HF `LlamaForCausalLM` folder (`llm/`): same RMSNorm, rotary embedding, bias-free
  projections and SwiGLU MLP. IDEFICS's decoupled embedding and lm-head (`additional_vocab_size`
  rows kept apart so they can train while the rest is frozen) become ordinary rows of one table:
  lamm already trains its media tokens from their own table (`LanguageModel.media_token_embedding`),
  so `<image>`'s trained row goes there and the frozen/trainable split is the policy's job, not the
  checkpoint layout's. lamm's own media tokens that IDEFICS lacks get zero lm-head rows (logit 0),
  so they are never preferred over IDEFICS's own top token in practice;
- image attention mask -> `gated_xattn`'s per-token most recent medium, with `eos_ends_media` (text
  after an end of sequence sees no image until the next one), and the text layout IDEFICS's processor
  writes (`media_around: <fake_token_around_image>`, no chunk ends), so lamm's prompts are its prompts.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lamm.registry import CHECKPOINT_FORMATS
from lamm.tokens import MEDIA_TOKENS, PLACEHOLDERS, add_media_tokens
from lamm.zoo.hf_folders import save_hf_folder
from lamm.zoo.plan import OUT, ImportPlan
from lamm.zoo.state import StateReader, open_state

VISION_PREFIX = "model.vision_model."
PERCEIVER_PREFIX = "model.perceiver_resampler."
XATTN_PREFIX = "model.gated_cross_attn_layers."
AROUND_IMAGE = "<fake_token_around_image>"  # IDEFICS's processor writes it before and after every <image>


class IdeficsImportError(ValueError):
    """The folder is not an IDEFICS checkpoint lamm can represent exactly."""


@dataclass(frozen=True)
class IdeficsShape:
    """The sizes and switches of an IDEFICS config that decide lamm's parts."""

    hidden: int
    heads: int
    layers: int
    interval: int
    vocab: int
    additional: int
    vision_width: int
    config: dict

    @classmethod
    def read(cls, src: Path) -> "IdeficsShape":
        file = src / "config.json"
        if not file.is_file():
            raise IdeficsImportError(f"{src}: no config.json (hf_idefics takes an IdeficsForVisionText2Text folder)")
        config = json.loads(file.read_text())
        if config.get("model_type") != "idefics":
            raise IdeficsImportError(
                f"{file}: model_type is {config.get('model_type')!r}, not 'idefics' (hf_idefics takes an "
                f"IdeficsForVisionText2Text folder)")
        from transformers import IdeficsConfig

        full = IdeficsConfig.from_pretrained(str(src)).to_dict()  # the peer's defaults for absent keys
        if not full["use_resampler"]:
            raise IdeficsImportError(f"{file}: use_resampler is false; hf_idefics imports IDEFICS with its "
                                     "perceiver resampler (every published IDEFICS has one)")
        if full["hidden_act"] != "silu":
            raise IdeficsImportError(f"{file}: hidden_act {full['hidden_act']!r}; lamm's SwiGLU blocks use silu")
        if full["alpha_type"] not in ("float", "vector"):
            raise IdeficsImportError(f"{file}: alpha_type {full['alpha_type']!r} is not float or vector")
        layers, interval = full["num_hidden_layers"], full["cross_layer_interval"]
        if layers % interval:
            raise IdeficsImportError(f"{file}: cross_layer_interval {interval} does not divide "
                                     f"num_hidden_layers {layers}")
        return cls(hidden=full["hidden_size"], heads=full["num_attention_heads"], layers=layers, interval=interval,
                   vocab=full["vocab_size"], additional=full["additional_vocab_size"],
                   vision_width=full["vision_config"]["embed_dim"], config=full)


def model_overrides(shape: IdeficsShape) -> list[str]:
    """lamm-train overrides that rebuild an IDEFICS: hf_vision + idefics_perceiver + idefics_xattn + hf LLM."""
    c, p = shape.config, shape.config["perceiver_config"]
    flag = {True: "true", False: "false"}
    return [
        "model/encoder=hf_clip_vit_l14_336", f"model.encoder.path={OUT}/vision", "model.encoder.layer=-1",
        "model.encoder.select=full", "model.encoder.pad_to_square=false", "model.encoder.post_layernorm=false",
        "model/projector=idefics_perceiver", f"model.projector.num_latents={p['resampler_n_latents']}",
        f"model.projector.depth={p['resampler_depth']}", f"model.projector.heads={p['resampler_n_heads']}",
        f"model.projector.dim_head={p['resampler_head_dim']}", "model.projector.ff_mult=4",
        f"model.projector.qk_norm={flag[bool(p['qk_layer_norms_perceiver'])]}", "model.projector.out_proj=false",
        "model/fusion=idefics_xattn", f"model.fusion.every={shape.interval}", f"model.fusion.heads={shape.heads}",
        f"model.fusion.dim_head={shape.hidden // shape.heads}", f"model.fusion.ff_dim={c['intermediate_size']}",
        f"model.fusion.norm_eps={c['rms_norm_eps']!r}", f"model.fusion.gate={c['alpha_type']}",
        f"model.fusion.qk_norm={flag[bool(c['qk_layer_norms'])]}", f"model.fusion.media_dim={shape.vision_width}",
        f"model.fusion.media_around='{AROUND_IMAGE}'", "model/llm=hf", f"model.llm.path={OUT}/llm",
    ]


# -- lamm-named tensors: perceiver, cross-attention blocks, media-token rows -------------------


def perceiver_weights(src: StateReader, shape: IdeficsShape) -> dict[str, torch.Tensor]:
    """IDEFICS's resampler as `projectors.image.*` of the perceiver projector."""
    p = PERCEIVER_PREFIX
    out = {"projectors.image.latents": src.take(p + "latents"),
           "projectors.image.norm.weight": src.take(p + "layer_norm.weight"),
           "projectors.image.norm.bias": src.take(p + "layer_norm.bias")}
    qk_norm = shape.config["perceiver_config"]["qk_layer_norms_perceiver"]
    for i in range(shape.config["perceiver_config"]["resampler_depth"]):
        attn, ff, dst = f"{p}blocks.{i}.0.", f"{p}blocks.{i}.1.", f"projectors.image.layers.{i}."
        for ours, theirs in (("norm_media", "context_layer_norm"), ("norm_latents", "latents_layer_norm"),
                             *((("q_norm", "q_layer_norm"), ("k_norm", "k_layer_norm")) if qk_norm else ())):
            for part in ("weight", "bias"):
                out[f"{dst}0.{ours}.{part}"] = src.take(f"{attn}{theirs}.{part}")
        out[dst + "0.to_q.weight"] = src.take(attn + "q_proj.weight")
        # lamm keeps keys and values in one Linear, keys first (chunk(2) splits it back).
        out[dst + "0.to_kv.weight"] = torch.cat([src.take(attn + "k_proj.weight"), src.take(attn + "v_proj.weight")])
        out[dst + "0.to_out.weight"] = src.take(attn + "output_proj.weight")
        out[dst + "1.0.weight"] = src.take(ff + "ln.weight")
        out[dst + "1.0.bias"] = src.take(ff + "ln.bias")
        out[dst + "1.1.weight"] = src.take(ff + "fc.weight")
        out[dst + "1.3.weight"] = src.take(ff + "c_proj.weight")
    return out


def cross_attention_weights(src: StateReader, shape: IdeficsShape) -> dict[str, torch.Tensor]:
    """IDEFICS's k-th gated block (before decoder layer k * interval) as `fusion.blocks.{layer}.*`."""
    out = {}
    for k in range(shape.layers // shape.interval):
        theirs, ours = f"{XATTN_PREFIX}{k}.", f"fusion.blocks.{k * shape.interval}."
        pairs = {"norm.weight": "input_layernorm.weight", "ff_norm.weight": "post_attention_layernorm.weight",
                 "to_q.weight": "cross_attn.q_proj.weight", "to_out.weight": "cross_attn.o_proj.weight",
                 "ff_in_gate.weight": "mlp.gate_proj.weight", "ff_in.weight": "mlp.up_proj.weight",
                 "ff_out.weight": "mlp.down_proj.weight"}
        if shape.config["qk_layer_norms"]:
            pairs |= {"q_norm.weight": "cross_attn.q_layer_norm.weight",
                      "k_norm.weight": "cross_attn.k_layer_norm.weight"}
        for name, key in pairs.items():
            out[ours + name] = src.take(theirs + key)
        out[ours + "to_kv.weight"] = torch.cat([src.take(theirs + "cross_attn.k_proj.weight"),
                                                src.take(theirs + "cross_attn.v_proj.weight")])
        # Vector alphas are [1, 1, hidden] in IDEFICS, [hidden] in lamm; float alphas are [1] in both.
        out[ours + "attn_gate"] = src.take(theirs + "alpha_cross_attn").reshape(-1)
        out[ours + "ff_gate"] = src.take(theirs + "alpha_dense").reshape(-1)
    return out


# -- the HF folders --------------------------------------------------------------------------


def lamm_tokenizer(src: Path, shape: IdeficsShape) -> Any:
    """IDEFICS's tokenizer with lamm's media tokens added (IDEFICS's own `<image>` keeps its id)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    for token in (PLACEHOLDERS["image"], AROUND_IMAGE):
        if token not in tokenizer.get_vocab():
            raise IdeficsImportError(f"{src}: the tokenizer has no {token} token (IDEFICS's processor writes it)")
    image_id = tokenizer.convert_tokens_to_ids(PLACEHOLDERS["image"])
    if image_id >= shape.vocab + shape.additional:
        raise IdeficsImportError(f"{src}: {PLACEHOLDERS['image']} has id {image_id} but the model has only "
                                 f"{shape.vocab} + {shape.additional} embedding rows")
    add_media_tokens(tokenizer)
    return tokenizer


def text_table(src: StateReader, shape: IdeficsShape, rows: int, key: str, additional_key: str | None = None
               ) -> torch.Tensor:
    """An embedding or lm-head table with IDEFICS's decoupled rows appended, zero rows up to `rows`."""
    parts = [src.take(key, (shape.vocab, shape.hidden))]
    if shape.additional:
        parts.append(src.take(additional_key, (shape.additional, shape.hidden)))
    table = torch.cat(parts)
    return torch.cat([table, table.new_zeros(rows - table.shape[0], shape.hidden)])


def media_token_rows(embed: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """`llm.media_token_embedding`: IDEFICS's trained `<image>` row; lamm's other media tokens at the
    mean of the other rows, as `LanguageModel` starts them."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in MEDIA_TOKENS]
    others = torch.ones(embed.shape[0], dtype=torch.bool)
    others[ids] = False
    rows = embed[others].mean(0, keepdim=True).repeat(len(ids), 1)
    rows[MEDIA_TOKENS.index(PLACEHOLDERS["image"])] = embed[ids[MEDIA_TOKENS.index(PLACEHOLDERS["image"])]]
    return rows.float()


def llm_config(shape: IdeficsShape, tokenizer: Any, rows: int) -> Any:
    """A LlamaConfig computing exactly IDEFICS's decoder (no GQA, no biases, untied head)."""
    from transformers import LlamaConfig

    c = shape.config
    return LlamaConfig(
        vocab_size=rows, hidden_size=shape.hidden, intermediate_size=c["intermediate_size"],
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        head_dim=shape.hidden // shape.heads, hidden_act=c["hidden_act"], rms_norm_eps=c["rms_norm_eps"],
        max_position_embeddings=c["max_position_embeddings"], rope_parameters=c["rope_parameters"],
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype=c.get("dtype") or "float32",
    )


def vision_config(shape: IdeficsShape) -> Any:
    """A CLIPVisionConfig with IDEFICS's vision sizes (same embeddings, blocks and norms as CLIP's)."""
    from transformers import CLIPVisionConfig

    v = shape.config["vision_config"]
    return CLIPVisionConfig(
        hidden_size=v["embed_dim"], intermediate_size=v["intermediate_size"], num_hidden_layers=v["num_hidden_layers"],
        num_attention_heads=v["num_attention_heads"], num_channels=v["num_channels"], image_size=v["image_size"],
        patch_size=v["patch_size"], hidden_act=v["hidden_act"], layer_norm_eps=v["layer_norm_eps"],
    )


def image_processor(src: Path, shape: IdeficsShape) -> Any:
    """IDEFICS's preprocessing as a CLIPImageProcessor: bicubic resize to a square, no crop, its mean/std."""
    from transformers import CLIPImageProcessor

    saved = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (src / name).is_file():
            data = json.loads((src / name).read_text())
            saved = data.get("image_processor", data)
            break
    size = int(saved.get("image_size") or shape.config["vision_config"]["image_size"])
    kwargs = {k: saved[k] for k in ("image_mean", "image_std", "resample", "rescale_factor") if k in saved}
    return CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False, do_convert_rgb=True,
                              **kwargs)


@CHECKPOINT_FORMATS.register("hf_idefics")
def import_idefics(src: Path) -> ImportPlan:
    """An `IdeficsForVisionText2Text` folder (config.json, safetensors or .bin weights, tokenizer, processor)."""
    src = Path(src)
    shape = IdeficsShape.read(src)
    state = open_state(src)
    tokenizer = lamm_tokenizer(src, shape)
    rows = max(len(tokenizer), shape.vocab + shape.additional)
    embed = text_table(state, shape, rows, "model.embed_tokens.weight", "model.embed_tokens.additional_embedding.weight")
    weights = {**perceiver_weights(state, shape), **cross_attention_weights(state, shape),
               "llm.media_token_embedding": media_token_rows(embed, tokenizer)}
    # Checkpoints saved by older transformers also hold buffers that are recomputed at load time.
    buffers = [k for k in state.keys() if k.endswith((".rotary_emb.inv_freq", "embeddings.position_ids"))]
    decoder = [k for k in state.keys() if k.startswith("model.layers.") and k not in buffers] + ["model.norm.weight"]
    vision = [k for k in state.keys_with_prefix(VISION_PREFIX) if k not in buffers]
    head = ["lm_head.weight"] + (["lm_head.additional_fc.weight"] if shape.additional else [])
    # Everything left is read while the folders are written; anything else is a key IDEFICS does not have.
    state.skip(decoder + vision + head + buffers)
    state.finish()

    def write_folders(staging: Path) -> None:
        llm_tensors = [("model.embed_tokens.weight", lambda: embed),
                       ("lm_head.weight", lambda: text_table(state, shape, rows, *head)),
                       *((key, functools.partial(state.take, key)) for key in decoder)]
        save_hf_folder(staging / "llm", llm_config(shape, tokenizer, rows), llm_tensors, tokenizer)
        vision_tensors = [("vision_model." + key[len(VISION_PREFIX):], functools.partial(state.take, key))
                          for key in vision]
        save_hf_folder(staging / "vision", vision_config(shape), vision_tensors, image_processor(src, shape))

    notes = {"source_architecture": "IdeficsForVisionText2Text", "cross_layer_interval": shape.interval,
             "alpha_type": shape.config["alpha_type"], "qk_layer_norms": shape.config["qk_layer_norms"],
             "decoupled_rows": f"{shape.additional} additional rows joined to the {shape.vocab}-row tables",
             "prompt_format": f"{AROUND_IMAGE}<image>{AROUND_IMAGE} per image, one shared between adjacent images"}
    return ImportPlan(model_overrides(shape), weights, write_folders, notes)
