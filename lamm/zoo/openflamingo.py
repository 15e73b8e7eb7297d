"""`openflamingo`: an OpenFlamingo `checkpoint.pt` on its base LLM and its open_clip vision tower.

OpenFlamingo saves only what it trains (a released `checkpoint.pt`, or a training script's
`checkpoint_<epoch>.pt`, whose `model_state_dict` it reads): `perceiver.*`, the gated cross-attention blocks it slots in
before decoder layers (`lang_encoder.<layers>.<i>.gated_cross_attn_layer.*`) and the LLM's embedding
tables (resized by `<|endofchunk|>`, `<image>` and, for tokenizers without one, `<PAD>`). The base LLM
and the CLIP tower come from their own files, named by options:

    lamm import openflamingo checkpoint.pt OUT --option llm=BASE_LLM_FOLDER --option vision=CLIP_FILE

- `llm`: the Hugging Face folder of the base LLM it was trained on (MPT, RedPajama, LLaMA, ...).
- `vision`: an open_clip checkpoint file (a full CLIP state dict or the vision tower), with
  `vision_model` its open_clip name (default ViT-L-14-quickgelu: OpenFlamingo's openai ViT-L/14 runs
  QuickGELU); or an open_clip `local-dir` folder (open_clip_config.json beside the weights).
- `cross_attn_every_n_layers`: optional; read from the checkpoint, and checked when given.

lamm runs it as encoder open_clip (last block, ln_post, patch tokens) -> perceiver (no output Linear,
media at the vision width) -> gated_xattn (Flamingo's plain `x + tanh(g) * y`, each token attending to
its latest image only), with `OUT/llm` the base LLM with OpenFlamingo's tokens and embeddings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file

from lamm.llm.language_model import find_decoder_layers
from lamm.registry import CHECKPOINT_FORMATS
from lamm.tokens import END_OF_CHUNK, MEDIA_TOKENS, PLACEHOLDERS
from lamm.zoo.hf_folders import save_hf_folder
from lamm.zoo.parts import meta_module
from lamm.zoo.plan import OUT, ImportPlan
from lamm.zoo.state import CheckpointKeyError, StateReader, open_state

LM = "lang_encoder."
DDP = "module."
XATTN = "gated_cross_attn_layer"
HEADS = 8  # OpenFlamingo builds its perceiver and every cross-attention block with 8 heads
ADDED_TOKENS = [END_OF_CHUNK, PLACEHOLDERS["image"]]  # what OpenFlamingo adds to the tokenizer, in order
PAD_TOKEN = "<PAD>"  # added by OpenFlamingo when the tokenizer has no pad token
DEFAULT_VISION_MODEL = "ViT-L-14-quickgelu"
VISION_FILE = "vision/visual.safetensors"

# lamm's GatedCrossAttentionBlock name -> OpenFlamingo's (MaskedCrossAttention in `attn`, FFN in `ff`).
BLOCK_KEYS = {
    "norm.weight": "attn.norm.weight", "norm.bias": "attn.norm.bias", "to_q.weight": "attn.to_q.weight",
    "to_kv.weight": "attn.to_kv.weight", "to_out.weight": "attn.to_out.weight", "attn_gate": "attn_gate",
    "ff_norm.weight": "ff.0.weight", "ff_norm.bias": "ff.0.bias", "ff_in.weight": "ff.1.weight",
    "ff_out.weight": "ff.3.weight", "ff_gate": "ff_gate",
}


@CHECKPOINT_FORMATS.register("openflamingo")
def import_openflamingo(src: Path, llm: str | None = None, vision: str | None = None,
                        vision_model: str = DEFAULT_VISION_MODEL,
                        cross_attn_every_n_layers: str | None = None) -> ImportPlan:
    if not llm:
        raise ValueError("openflamingo: --option llm=PATH is required "
                         "(the base LLM folder the checkpoint was trained on)")
    if not vision:
        raise ValueError("openflamingo: --option vision=PATH is required "
                         "(the open_clip vision checkpoint file or folder)")
    state = _without_ddp_prefix(open_state(src))
    base = BaseLLM(Path(llm).expanduser())
    weights: dict[str, torch.Tensor] = {}
    fusion = _cross_attention(state, base, weights, cross_attn_every_n_layers)
    perceiver = _perceiver(state, weights)
    if fusion["media_dim"] != perceiver["width"]:
        raise CheckpointKeyError(f"{src}: the cross-attention reads media of width {fusion['media_dim']}, "
                                 f"but the perceiver emits width {perceiver['width']}")
    replaced = _llm_tensors(state, base)
    weights["llm.media_token_embedding"] = base.media_token_rows(replaced, state)
    tower, vision_overrides, vision_notes = _vision(Path(vision).expanduser(), vision_model, perceiver["width"])
    state.finish()

    def write_folders(staging: Path) -> None:
        base.write(staging / "llm", state, replaced)
        (staging / VISION_FILE).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tower.items()}, str(staging / VISION_FILE))

    overrides = [
        "model/llm=hf", f"model.llm.path={OUT}/llm", "model.llm.dtype=float32",
        *vision_overrides,
        "model/projector=perceiver", *(f"model.projector.{k}={_hydra(v)}" for k, v in perceiver["options"].items()),
        "++model.projector.out_proj=false",
        "model/fusion=gated_xattn", *(f"model.fusion.{k}={_hydra(v)}" for k, v in fusion["options"].items()),
        f"++model.fusion.media_dim={fusion['media_dim']}",
        "model/policy=align",
    ]
    notes = {"decoder_layers": base.layers_path, "cross_attention_layers": fusion["layers"],
             "tokens": base.token_ids, "llm_tensors_from_checkpoint": sorted(replaced), **vision_notes,
             **base.head_note(replaced)}
    return ImportPlan(overrides=overrides, weights=weights, write_folders=write_folders, notes=notes)


def _without_ddp_prefix(state: StateReader) -> StateReader:
    """OpenFlamingo's training checkpoints (`checkpoint_<epoch>.pt`) hold the DDP model's names."""
    keys = state.keys()
    if not keys or not all(k.startswith(DDP) for k in keys):
        return state
    return StateReader(state.source, {k[len(DDP):]: state.shape(k) for k in keys}, lambda k: state.take(DDP + k))


# -- the language model ----------------------------------------------------------------------------

class BaseLLM:
    """The base LLM's config and tokenizer (weights stay on disk), with OpenFlamingo's tokens added."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if not path.is_dir():
            raise FileNotFoundError(2, "openflamingo: the llm option names no folder", str(path))
        try:
            self.config = AutoConfig.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # transformers' errors are long: keep their first line
            raise ValueError(f"openflamingo: llm={path} is not a Hugging Face LLM folder "
                             f"({str(exc).strip().splitlines()[0]})") from None
        self.path = path
        text = self.config.get_text_config()
        model = meta_module(lambda: AutoModelForCausalLM.from_config(self.config))
        names = {id(m): n for n, m in model.named_modules()}
        # The decoder layers found as lamm finds them for gated_xattn (OpenFlamingo's decoder_layers_attr_name).
        self.layers_path = names[id(find_decoder_layers(model, text.num_hidden_layers))]
        self.num_layers = text.num_hidden_layers
        self.hidden_size = text.hidden_size
        self.input_name = names[id(model.get_input_embeddings())] + ".weight"
        output = model.get_output_embeddings()
        self.output_name = names[id(output)] + ".weight" if output is not None else None
        self.tied = bool(getattr(text, "tie_word_embeddings", False))
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
        # OpenFlamingo's tokenizer: the base one plus its tokens, so ids match its checkpoint's rows.
        self.tokenizer.add_special_tokens({"additional_special_tokens": ADDED_TOKENS},
                                          replace_extra_special_tokens=False)
        if self.tokenizer.pad_token is None:
            self.tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        self.vocab = len(self.tokenizer)
        self.token_ids = {t: self.tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
        self.base_vocab = self.shapes[self.input_name][0]

    def expected_shape(self, name: str) -> tuple[int, ...]:
        shape = self.shapes[name]
        if name in (self.input_name, self.output_name):
            return (self.vocab, *shape[1:])  # resized to OpenFlamingo's tokenizer
        return shape

    def media_token_rows(self, replaced: dict[str, str], state: StateReader) -> torch.Tensor:
        """lamm's media-token table: OpenFlamingo's rows for its tokens, the mean row for lamm's others."""
        table = state.take(replaced[self.input_name]).float()
        ours = [self.token_ids.get(t) for t in MEDIA_TOKENS]
        others = torch.ones(len(table), dtype=torch.bool)
        others[[i for i in ours if i is not None]] = False
        mean = table[others].mean(0)
        return torch.stack([table[i] if i is not None else mean for i in ours])

    def head_note(self, replaced: dict[str, str]) -> dict[str, str]:
        if self.tied or self.output_name is None or self.output_name in replaced:
            return {}
        return {"lm_head_new_rows": "the checkpoint holds no LM-head rows for the added tokens "
                                    "(OpenFlamingo initialises them randomly at load); they start at the mean row"}

    def write(self, folder: Path, state: StateReader, replaced: dict[str, str]) -> None:
        """The base LLM with the checkpoint's tensors in place, vocabulary resized, and the tokenizer."""
        source = open_state(self.path)
        file_keys = set(source.keys())
        for name in replaced:
            if name not in file_keys and not (self.tied and name == self.output_name):
                raise CheckpointKeyError(f"{state.source}: '{LM}{name}' replaces '{name}', "
                                         f"which {self.path} does not hold")

        def tensors() -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
            for key in source.keys():
                if key in replaced:
                    yield key, lambda k=replaced[key]: state.take(k)
                elif key in (self.input_name, self.output_name):
                    yield key, lambda k=key: _grow(source.take(k), self.vocab)
                else:
                    yield key, lambda k=key: source.take(k)

        self.config.get_text_config().vocab_size = self.vocab
        save_hf_folder(folder, self.config, tensors(), self.tokenizer)


def _grow(table: torch.Tensor, rows: int) -> torch.Tensor:
    """An embedding table resized to `rows`: new rows at the mean row (the way lamm starts new tokens)."""
    if len(table) >= rows:
        return table[:rows]
    return torch.cat([table, table.float().mean(0, keepdim=True).to(table.dtype).expand(rows - len(table), -1)])


def _llm_tensors(state: StateReader, base: BaseLLM) -> dict[str, str]:
    """LLM parameter name -> checkpoint key, for every LLM tensor the checkpoint holds (its embeddings)."""
    replaced = {}
    for key in state.keys_with_prefix(LM):
        if f".{XATTN}." in key:
            continue
        name = key[len(LM):]
        if name not in base.shapes:
            raise CheckpointKeyError(f"unexpected key '{key}' in {state.source}: {base.path} has no parameter '{name}'")
        if tuple(state.shape(key)) != base.expected_shape(name):
            state.take(key, base.expected_shape(name))  # raises naming both shapes
        replaced[name] = key
    if base.input_name not in replaced:
        raise CheckpointKeyError(f"missing key '{LM}{base.input_name}' in {state.source} "
                                 "(the embeddings of OpenFlamingo's <image> and <|endofchunk|>)")
    state.skip(replaced.values())  # read when OUT/llm is written (a tied LM head's copy is not needed)
    return replaced


# -- cross-attention blocks and perceiver ----------------------------------------------------------

def _cross_attention(state: StateReader, base: BaseLLM, weights: dict[str, torch.Tensor],
                     every_option: str | None) -> dict[str, Any]:
    prefix = f"{LM}{base.layers_path}."
    layers = sorted({int(k[len(prefix):].split(".", 1)[0]) for k in state.keys_with_prefix(prefix)
                     if f".{XATTN}." in k})
    if not layers:
        raise CheckpointKeyError(f"{state.source} holds no '{prefix}<i>.{XATTN}.*' tensors: not an OpenFlamingo "
                                 f"checkpoint for the decoder layers '{base.layers_path}' of {base.path}")
    every = layers[0] + 1
    if every_option is not None and int(every_option) != every:
        raise ValueError(f"openflamingo: cross_attn_every_n_layers={every_option}, but {state.source} has "
                         f"cross-attention before every {every} layers")
    expected = [i for i in range(base.num_layers) if (i + 1) % every == 0]
    if layers != expected:
        missing = sorted(set(expected) - set(layers))
        where = (f"missing '{prefix}{missing[0]}.{XATTN}.*'" if missing
                 else f"unexpected '{prefix}{layers[-1]}.{XATTN}.*'")
        raise CheckpointKeyError(f"{state.source}: cross-attention before layers {layers}, but one every {every} "
                                 f"layers of {base.num_layers} is {expected} ({where})")
    first = f"{prefix}{layers[0]}.{XATTN}."
    hidden = base.hidden_size
    inner, media_dim = state.shape(first + "attn.to_kv.weight")[0] // 2, state.shape(first + "attn.to_kv.weight")[1]
    ff = state.shape(first + "ff.1.weight")[0]
    if inner % HEADS or ff % hidden:
        raise CheckpointKeyError(f"{state.source}: '{first}attn.to_kv.weight' / 'ff.1.weight' shapes do not fit "
                                 f"{HEADS} heads and an FFN a multiple of the width {hidden}")
    shapes = {
        "norm.weight": (hidden,), "norm.bias": (hidden,), "to_q.weight": (inner, hidden),
        "to_kv.weight": (2 * inner, media_dim), "to_out.weight": (hidden, inner), "attn_gate": (1,),
        "ff_norm.weight": (hidden,), "ff_norm.bias": (hidden,), "ff_in.weight": (ff, hidden),
        "ff_out.weight": (hidden, ff), "ff_gate": (1,),
    }
    for i in layers:
        for ours, theirs in BLOCK_KEYS.items():
            weights[f"fusion.blocks.{i}.{ours}"] = state.take(f"{prefix}{i}.{XATTN}.{theirs}", shapes[ours])
    options = {"every": every, "heads": HEADS, "dim_head": inner // HEADS, "ff_mult": ff // hidden,
               "only_latest_media": True, "media_norm": False, "output_scale": "none"}
    return {"options": options, "media_dim": media_dim, "layers": layers}


def _perceiver(state: StateReader, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    p = "perceiver."
    num_latents, width = state.shape(p + "latents")
    depth = len({k.split(".")[2] for k in state.keys_with_prefix(p + "layers.")})
    if depth == 0:
        raise CheckpointKeyError(f"missing key '{p}layers.0.0.to_q.weight' in {state.source}")
    inner = state.shape(p + "layers.0.0.to_q.weight")[0]
    ff = state.shape(p + "layers.0.1.1.weight")[0]
    if inner % HEADS or ff % width:
        raise CheckpointKeyError(f"{state.source}: '{p}layers.0' shapes do not fit {HEADS} heads and an FFN "
                                 f"a multiple of the width {width}")
    layer = {
        "0.norm_media.weight": (width,), "0.norm_media.bias": (width,), "0.norm_latents.weight": (width,),
        "0.norm_latents.bias": (width,), "0.to_q.weight": (inner, width), "0.to_kv.weight": (2 * inner, width),
        "0.to_out.weight": (width, inner), "1.0.weight": (width,), "1.0.bias": (width,),
        "1.1.weight": (ff, width), "1.3.weight": (width, ff),
    }
    ours = "projectors.image."
    weights[ours + "latents"] = state.take(p + "latents")
    for d in range(depth):
        for name, shape in layer.items():
            weights[f"{ours}layers.{d}.{name}"] = state.take(f"{p}layers.{d}.{name}", shape)
    weights[ours + "norm.weight"] = state.take(p + "norm.weight", (width,))
    weights[ours + "norm.bias"] = state.take(p + "norm.bias", (width,))
    max_frames = max_media = None
    if p + "frame_embs" in state:
        max_frames = state.shape(p + "frame_embs")[0]
        weights[ours + "frame_embs"] = state.take(p + "frame_embs", (max_frames, width))
    if p + "media_time_embs" in state:  # [T, 1, D] in OpenFlamingo, [T, D] in lamm
        max_media = state.shape(p + "media_time_embs")[0]
        weights[ours + "media_time_embs"] = state.take(p + "media_time_embs", (max_media, 1, width))[:, 0]
    options = {"num_latents": num_latents, "depth": depth, "heads": HEADS, "dim_head": inner // HEADS,
               "ff_mult": ff // width, "max_frames": max_frames, "max_media": max_media}
    return {"options": options, "width": width}


# -- the vision tower ------------------------------------------------------------------------------

def _vision(path: Path, model_name: str, width: int) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """The open_clip vision tower's tensors, the encoder overrides that rebuild it, and notes."""
    import open_clip

    if not path.exists():
        raise FileNotFoundError(2, "openflamingo: the vision option names no file or folder", str(path))
    if path.is_dir():
        config_file = path / "open_clip_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(2, "openflamingo: vision folder without open_clip_config.json", str(config_file))
        cfg = json.loads(config_file.read_text())
        cfg = cfg.get("model_cfg", cfg)
        # The text tower is never used; the encoder builds a tiny stand-in for it.
        arch = [f"model.encoder.model_cfg={_hydra({k: v for k, v in cfg.items() if k != 'text_cfg'})}",
                f"model.encoder.model_name={_hydra(path.name)}"]
    else:
        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ValueError(f"openflamingo: vision_model={model_name!r} is not an open_clip model name")
        arch = [f"model.encoder.model_name={_hydra(model_name)}"]
    vision_width = cfg.get("vision_cfg", {}).get("width")
    if vision_width != width:
        raise ValueError(f"openflamingo: the perceiver works at width {width}, but the open_clip vision tower "
                         f"{model_name if path.is_file() else path} has width {vision_width}")
    source = open_state(path)
    keys = source.keys()
    prefix = "visual." if any(k.startswith("visual.") for k in keys) else ""
    tower = {k[len(prefix):]: source.take(k) for k in keys if k.startswith(prefix)}
    overrides = ["model/encoder=clip_vit_l14", *arch, f"model.encoder.pretrained={OUT}/{VISION_FILE}",
                 "model.encoder.layer=-1", "model.encoder.final_norm=true", "model.encoder.include_cls=false",
                 "model.encoder.image_size=null"]
    return tower, overrides, {"vision": str(path.resolve()), "vision_model": model_name if path.is_file() else None}


def _hydra(value: Any) -> str:
    """A plain value as Hydra override grammar (dicts and lists included)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
