"""`lamm import lamm`: LAMM's delta checkpoint (llama_proj + peft LoRA) on a base Llama and a CLIP tower.

The checkpoint is synthetic but in LAMM's exact layout: LAMM keeps the LLM as a peft model under
`llama_model` and saves its trainable parameters by name, so the keys here are `llama_model.` + the
names peft itself gives the adapters of a tiny Llama saved by transformers.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lamm.testing import save_tiny_vision_tower
from lamm.zoo import CheckpointKeyError, import_checkpoint

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
LORA = dict(r=32, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
LAYERS, HIDDEN, VOCAB = 2, 64, 512


def _peft_llama(llm: Path):
    """The base Llama wrapped as LAMM wraps it (peft LoRA with LAMM's config)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(llm)
    return get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, **LORA))


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict:
    """A tiny Llama base folder, openai-style CLIP folder, and a LAMM delta checkpoint for them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lamm.llm.tiny import tiny_tokenizer

    root = tmp_path_factory.mktemp("lamm_parts")
    vision = save_tiny_vision_tower("clip_full", root)  # a two-tower CLIPModel folder, as openai's is
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2)  # k/v narrower than q: shapes differ
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    tiny_tokenizer().save_pretrained(root / "llm")

    peft = _peft_llama(root / "llm")
    generator = torch.Generator().manual_seed(1)
    delta = {}  # LAMM's agent.save_model: the requires_grad parameters of LAMMPEFTModel, by name
    for name, param in peft.named_parameters():
        if param.requires_grad:
            with torch.no_grad():  # peft starts B at zero; trained adapters are not
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            delta["llama_model." + name] = param
    width = 32  # the tiny tower's hidden size (LAMM: ViT-L/14's 1024)
    delta["llama_proj.weight"] = torch.nn.Parameter(torch.randn(HIDDEN, width, generator=generator) * 0.1)
    delta["llama_proj.bias"] = torch.nn.Parameter(torch.randn(HIDDEN, generator=generator) * 0.1)
    src = root / "delta"
    src.mkdir()
    torch.save(delta, src / "pytorch_model.pt")
    tiny_tokenizer().save_pretrained(src)  # LAMM's save folder also holds the tokenizer and the LLM's config
    config.save_pretrained(src)
    image = root / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    return {"root": root, "llm": root / "llm", "vision": vision, "src": src,
            "delta": {k: v.detach().clone() for k, v in delta.items()}, "peft": peft.eval(), "image": image}


@pytest.fixture(scope="module")
def imported(parts) -> Path:
    """What a user types: `lamm import lamm SRC OUT --option llm=... --option vision=...`."""
    out = parts["root"] / "imported"
    result = subprocess.run([str(BIN / "lamm"), "import", "lamm", str(parts["src"]), str(out),
                             "--option", f"llm={parts['llm']}", "--option", f"vision={parts['vision']}"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_every_tensor_lands_in_the_model_and_the_config_is_lamms(parts, imported):
    from lamm.training.export import load_for_inference

    record = json.loads((imported / "import.json").read_text())
    assert record["format"] == "lamm"
    assert record["notes"]["lora"] == {"r": 32, "alpha": 32.0, "targets": ["k_proj", "o_proj", "q_proj", "v_proj"],
                                       "modules": 4 * LAYERS}
    model, cfg = load_for_inference(imported)
    assert (cfg.model.encoder.name, cfg.model.encoder.layer, cfg.model.encoder.select) == ("hf_vision", -1, "patch")
    assert cfg.model.projector.name == "linear" and cfg.model.fusion.name == "prefix"
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (32, 32, 0.1)
    assert cfg.model.policy.llm == "lora" and cfg.model.policy.encoder == "frozen"
    assert cfg.data.template == "lamm"
    state = model.state_dict()
    delta = dict(parts["delta"])
    assert torch.equal(state["projectors.image.proj.weight"], delta.pop("llama_proj.weight"))
    assert torch.equal(state["projectors.image.proj.bias"], delta.pop("llama_proj.bias"))
    assert len(delta) == 8 * LAYERS
    for key, value in delta.items():  # LoRA A and B, through the model's own state dict
        name = "llm.causal_lm." + key.removeprefix("llama_model.base_model.model.")
        assert torch.equal(state[name], value), key


def test_logits_equal_base_llama_with_peft_lora_and_the_projected_clip_patches(parts, imported):
    from transformers import CLIPVisionModel

    from lamm.testing import random_media, text_batch
    from lamm.training.export import load_for_inference
    from lamm.tokens import PLACEHOLDERS

    model, _ = load_for_inference(imported)
    model.eval()
    pixels = random_media(model, "image", 1, seed=3)
    prompt = f"### Human: <Img>{model.placeholder_text('image')}</Img> What colour is the shape?\n### Assistant:"
    batch = text_batch(model, [prompt], {"image": (pixels, [0])}, labels=False)
    with torch.no_grad():
        ours = model(batch, logits="all").logits

        # LAMM: CLIP's transformer output (every block, before ln_post) without CLS -> llama_proj.
        tower = CLIPVisionModel.from_pretrained(parts["vision"]).eval()
        patches = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
        delta = parts["delta"]
        features = F.linear(patches, delta["llama_proj.weight"], delta["llama_proj.bias"])
        ids = batch.input_ids
        image_id = model.tokenizer.convert_tokens_to_ids(PLACEHOLDERS["image"])
        at_image = ids == image_id
        assert int(at_image.sum()) == features.shape[1] == 16
        peft = parts["peft"]
        embeds = peft.get_input_embeddings()(ids.masked_fill(at_image, 0))
        embeds[at_image] = features.reshape(-1, HIDDEN)
        reference = peft(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
        with peft.disable_adapter():  # the adapters must matter, or the comparison proves nothing about them
            base = peft(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    assert ours.shape[:2] == reference.shape[:2]
    torch.testing.assert_close(ours[..., :VOCAB], reference, atol=1e-4, rtol=0)
    assert (base - reference).abs().max() > 1e-2


def test_lamm_chat_answers_about_an_image_with_the_imported_folder(parts, imported):
    script = f"/image {parts['image']}\nWhat colour is the shape?\n/quit\n"
    result = subprocess.run([str(BIN / "lamm-chat"), str(imported), "--stats", "--max-new-tokens", "4"],
                            input=script, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    turn = [line for line in result.stderr.splitlines() if line.startswith("lamm-chat: [turn 1]")]
    assert turn and "media image=1; placeholders image=16" in turn[0], result.stderr[-2000:]
    assert "reply 4 tokens" in turn[0] and result.stdout.strip()


def _corrupt(parts: dict, name: str, change) -> Path:
    delta = {k: v.clone() for k, v in parts["delta"].items()}
    change(delta)
    path = parts["root"] / name / "pytorch_model.pt"
    path.parent.mkdir()
    torch.save(delta, path)
    return path


class Payload:  # a pickled object: the loader must refuse it, never build it
    pass


LORA_B = "llama_model.base_model.model.model.layers.1.self_attn.k_proj.lora_B.default.weight"


def _one_error_line(text: str, message: str) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamm import: error:"), text
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("case, change, message", [
    ("missing", lambda d: d.pop(LORA_B), rf"missing key '{LORA_B}' in .*bad_missing"),
    ("shape", lambda d: d.update({"llama_proj.weight": d["llama_proj.weight"].T.contiguous()}),
     r"key 'llama_proj.weight' in .*bad_shape.* has shape \[32, 64\], expected \[64, 32\]"),
    ("pickle", lambda d: d.update({"extra": Payload()}), r"cannot read .*bad_pickle.* safely \(weights only"),
])
def test_a_corrupted_checkpoint_is_one_line_exit_2_and_nothing_written(parts, capsys, case, change, message):
    from lamm.cli.main import main  # the `lamm` console script's entry point, in process: no 8 s start-up each

    src = _corrupt(parts, f"bad_{case}", change)
    out = parts["root"] / f"out_{case}"
    code = main(["import", "lamm", str(src), str(out), "--option", f"llm={parts['llm']}",
                 "--option", f"vision={parts['vision']}"])
    assert code == 2
    _one_error_line(capsys.readouterr().err, message)
    assert not out.exists() and not list(parts["root"].glob(f".out_{case}*"))


def test_the_3d_variant_and_missing_folders_are_refused_in_one_line(parts, tmp_path):
    epcl = _corrupt(parts, "epcl", lambda d: d.update({"visual_encoder.pre_encoder.mlp.0.weight": torch.zeros(4, 3)}))
    options = {"llm": str(parts["llm"]), "vision": str(parts["vision"])}
    with pytest.raises(CheckpointKeyError, match=r"holds point-encoder tensors .* EPCL .* point_bert .* cannot hold"):
        import_checkpoint("lamm", epcl, tmp_path / "a", options)
    with pytest.raises(CheckpointKeyError, match=r"vision=.*\.pt is a file, not a Hugging Face CLIP folder: .* EPCL"):
        import_checkpoint("lamm", parts["src"], tmp_path / "b", {**options, "vision": str(epcl)})
    global_variant = _corrupt(parts, "global", lambda d: d.update({"llama_proj.weight": torch.zeros(HIDDEN, 16)}))
    with pytest.raises(CheckpointKeyError, match=r"llama_proj reads 16-wide features, .* LAMM's 'global' variant"):
        import_checkpoint("lamm", global_variant, tmp_path / "g", options)
    with pytest.raises(ValueError, match=r"--option llm=PATH is required"):
        import_checkpoint("lamm", parts["src"], tmp_path / "c", {"vision": str(parts["vision"])})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['visoin'\]"):
        import_checkpoint("lamm", parts["src"], tmp_path / "d", {**options, "visoin": "x"})
    (parts["root"] / "epcl" / "pytorch_model_ep1.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"found pytorch_model.pt, pytorch_model_ep1.pt; name the file"):
        import_checkpoint("lamm", parts["root"] / "epcl", tmp_path / "e", options)
    assert list(tmp_path.iterdir()) == []


def test_lamm_eval_on_the_imported_folder(imported, tmp_path) -> None:
    """`lamm-eval checkpoint=OUT benchmark=shapes_ppl`, in this process (its console script is tested elsewhere)."""
    from lamm.testing import evaluate_run_in_process

    evaluate_run_in_process(imported, tmp_path, "lamm")
