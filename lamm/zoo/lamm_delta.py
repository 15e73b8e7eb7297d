"""`lamm`: LAMM's released delta checkpoint on top of its base LLM folder and its CLIP tower folder.

LAMM saves only the parameters it trained (`torch.save` of the `requires_grad` parameters of its
`LAMMPEFTModel`), so a release is a small file of:

- `llama_proj.weight [H, 1024]`, `llama_proj.bias [H]`: one Linear from CLIP ViT-L/14 patch features
  to the LLM's width, applied token by token;
- `llama_model.base_model.model.<module>.lora_A.default.weight [r, in]` and `...lora_B.default.weight
  [out, r]`: peft LoRA (r 32, alpha 32, dropout 0.1 on q, k, v, o) on a LLaMA/Vicuna base that is not in
  the file (older peft versions name them without `.default`).

The image features are CLIP ViT-L/14's last transformer block at 224 px, before `ln_post`, CLS token
dropped (256 tokens), placed between `### Human: <Img>` and `</Img>`. Here they become `hf_vision`
(layer -1, patch tokens) on the tower folder, the `linear` projector, `prefix` fusion and peft LoRA on
the base LLM folder (`lora` policy). The two folders are referenced, not copied: a 13B base is not
duplicated. LAMM's 3D variant reads EPCL, not a Point-BERT encoder, and is refused (see `_refuse_3d`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lamm.registry import CHECKPOINT_FORMATS
from lamm.zoo.parts import meta_module
from lamm.zoo.plan import ImportPlan, quote_value
from lamm.zoo.state import CheckpointKeyError, StateReader, open_state

PROJ = "llama_proj."
LORA_PREFIX = "llama_model.base_model.model."
LAMM_LORA = {"alpha": 32.0, "dropout": 0.1}  # LAMM's training config; the file holds only r (in the shapes)
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<half>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_OPTIONS = ("llm", "vision", "lora_alpha")
# Prefixes of the point encoder LAMM's 3D variant uses (EPCL: src/model/EPCL/model_3detr.py).
_EPCL_PREFIXES = ("visual_encoder.pre_encoder.", "visual_encoder.encoder.", "visual_encoder.te_encoder.")
_3D_REFUSAL = ("LAMM's 3D variant encodes point clouds with EPCL (PointNet++ set abstraction with ball query, "
               "a frozen CLIP ViT over the point tokens, 19 task-embedding tokens), which lamm's point_bert "
               "(FPS + kNN groups, mini-PointNet, its own transformer) cannot hold; only the 2D CLIP variant imports")


def _folder(option: str, value: str | None, what: str) -> Path:
    if not value:
        raise ValueError(f"lamm import lamm: --option {option}=PATH is required ({what})")
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        if path.is_file() and option == "vision":
            _refuse_3d(f"--option vision={value} is a file, not a Hugging Face CLIP folder")
        raise FileNotFoundError(2, f"--option {option}: no such folder ({what})", str(path))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(2, f"--option {option}: not a Hugging Face model folder (no config.json)", str(path))
    return path


def _delta_file(src: Path) -> Path:
    """The checkpoint file: `src`, or the one `*.pt` in LAMM's save folder (which also holds the tokenizer and
    the LLM's config.json, and per-epoch `pytorch_model_ep*.pt` files that must not be mixed)."""
    if not src.is_dir():
        return src
    files = sorted(src.glob("*.pt"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise FileNotFoundError(2, f"expected one LAMM delta checkpoint (*.pt) in the folder, found {found}; "
                                   "name the file", str(src))
    return files[0]


def _refuse_3d(why: str) -> None:
    raise CheckpointKeyError(f"{why}: {_3D_REFUSAL}")


def _vision_width(folder: Path) -> tuple[int, Any]:
    """The tower's hidden size (what `llama_proj` reads) and its config; a two-tower folder gives its vision half."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    vision = getattr(config, "vision_config", None) or config
    return int(vision.hidden_size), config


def _llm_linears(folder: Path) -> tuple[Any, dict[str, tuple[int, int]]]:
    """The base LLM's config and {module name: (in, out)} of its Linear layers, built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    model = meta_module(lambda: AutoModelForCausalLM.from_config(config))
    return config, {name: (m.in_features, m.out_features) for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear)}


def _lora_modules(state: StateReader) -> tuple[dict[str, dict[str, str]], str | None]:
    """{LLM module name: {"A": key, "B": key}} of the LoRA tensors under LAMM's prefix, and the adapter name."""
    modules: dict[str, dict[str, str]] = {}
    adapters = set()
    for key in state.keys_with_prefix(LORA_PREFIX):
        match = _LORA_KEY.match(key[len(LORA_PREFIX):])
        if match is None:
            continue  # left for finish(): an unexpected key
        modules.setdefault(match["module"], {})[match["half"]] = key
        adapters.add(match["adapter"])
    if len(adapters) > 1:
        raise CheckpointKeyError(f"{state.source}: LoRA tensors of several adapters {sorted(map(str, adapters))}; "
                                 "LAMM saves one")
    return modules, next(iter(adapters), None)


def _lora_key(module: str, half: str, adapter: str | None) -> str:
    return f"{LORA_PREFIX}{module}.lora_{half}{'.' + adapter if adapter else ''}.weight"


@CHECKPOINT_FORMATS.register("lamm")
def import_lamm(src: Path, **options: str) -> ImportPlan:
    """LAMM's delta checkpoint (`pytorch_model.pt`) + `--option llm=BASE_LLM_FOLDER --option vision=CLIP_FOLDER`
    -> hf_vision (last block, patch tokens) + linear + prefix + the base LLM with LAMM's LoRA.

    `--option lora_alpha=A` when the checkpoint was trained with another alpha than LAMM's 32 (the file
    does not record it; r is read from the tensors' shapes).
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"lamm import lamm: unknown option(s) {unknown}; known: {', '.join(_OPTIONS)}")
    try:
        alpha = float(options.get("lora_alpha", LAMM_LORA["alpha"]))
    except ValueError:
        raise ValueError(f"--option lora_alpha={options['lora_alpha']}: expected a number (LAMM's is 32)") from None
    state = open_state(_delta_file(Path(src)))
    if any(k.startswith(_EPCL_PREFIXES) for k in state.keys()):
        _refuse_3d(f"{state.source} holds point-encoder tensors (visual_encoder.*)")
    llm_dir = _folder("llm", options.get("llm"), "the LLaMA/Vicuna base LAMM was trained on")
    vision_dir = _folder("vision", options.get("vision"), "CLIP ViT-L/14 as a Hugging Face folder")
    width, vision_config = _vision_width(vision_dir)
    llm_config, linears = _llm_linears(llm_dir)
    hidden = int(llm_config.get_text_config().hidden_size)
    reads = state.shape(PROJ + "weight")[-1]
    if reads != width and reads == getattr(vision_config, "projection_dim", None):
        raise CheckpointKeyError(f"{state.source}: llama_proj reads {reads}-wide features, CLIP's projected image "
                                 f"embedding: LAMM's 'global' variant (one token), which hf_vision does not produce; "
                                 f"only the 'local' variant (patch tokens, {width} wide) imports")

    weights = {"projectors.image.proj.weight": state.take(PROJ + "weight", (hidden, width)),
               "projectors.image.proj.bias": state.take(PROJ + "bias", (hidden,))}

    modules, adapter = _lora_modules(state)
    if not modules:
        raise CheckpointKeyError(f"missing LoRA tensors '{LORA_PREFIX}*.lora_A*.weight' in {state.source} "
                                 "(a LAMM delta holds LoRA on the LLM besides llama_proj)")
    targets = sorted({name.rsplit(".", 1)[-1] for name in modules})
    first = next(iter(modules.values()))
    rank = state.shape(first.get("A") or first["B"])[0 if "A" in first else 1]
    for name, (n_in, n_out) in linears.items():
        if name.rsplit(".", 1)[-1] not in targets:
            continue  # peft adapts every Linear whose name ends in a target, so each one must be in the file
        for half, shape in (("A", (rank, n_in)), ("B", (n_out, rank))):
            key = _lora_key(name, half, adapter)
            weights[f"llm.causal_lm.{name}.lora_{half}.default.weight"] = state.take(key, shape)
    state.finish()  # a LoRA tensor on a module the base LLM lacks, or anything else, is an unexpected key

    overrides = [
        # An hf_vision group, every field set to LAMM's choice (224 px tower: its own processor decides).
        "model/encoder=hf_clip_vit_l14_336",
        f"model.encoder.path={quote_value(str(vision_dir))}",
        "model.encoder.layer=-1",  # LAMM's forward_patch_features: every block, no ln_post
        "model.encoder.select=patch",
        "model.encoder.pad_to_square=false",
        "model/projector=linear",
        "model.projector.bias=true",
        "model/fusion=prefix",
        "model/llm=hf",
        f"model.llm.path={quote_value(str(llm_dir))}",
        "model/lora=r32_qkvo",
        f"model.lora.r={rank}",
        f"model.lora.alpha={alpha:g}",
        f"model.lora.dropout={LAMM_LORA['dropout']}",
        f"model.lora.targets=[{','.join(targets)}]",
        "model/policy=lora",
        "data.template=lamm",  # LAMM's own prompt layout and `###` answer end (datasets/templates.py)
    ]
    notes = {"llm": str(llm_dir), "vision": str(vision_dir), "lora": {"r": rank, "alpha": alpha, "targets": targets,
             "modules": len(modules)}, "projector": [hidden, width],
             "folders": "referenced, not copied: keep the llm and vision folders where they are"}
    return ImportPlan(overrides=overrides, weights=weights, notes=notes)
