"""`lamm import hf_idefics`: a tiny IdeficsForVisionText2Text saved by transformers, imported, and run
by lamm logit for logit and token for token as transformers runs it; chat on the imported folder."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lamm.batch import Batch, MediaBatch
from lamm.llm.tiny import tiny_tokenizer
from lamm.training.export import load_for_inference
from lamm.zoo import import_checkpoint

BIN = Path(sys.executable).parent
IMAGE_SIZE = 16


def save_tiny_idefics(folder: Path, alpha_type: str, interval: int, qk_norms: bool, seed: int) -> Path:
    """A random IDEFICS (4 decoder layers, 2-layer ViT, 2-layer resampler) with open (non-zero) gates,
    saved with its processor the way HuggingFaceM4 publishes it."""
    from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsImageProcessor, IdeficsProcessor

    tokenizer = tiny_tokenizer(256)
    vocab = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>"]})
    config = IdeficsConfig(
        vocab_size=vocab, additional_vocab_size=2, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, cross_layer_interval=interval, qk_layer_norms=qk_norms, alpha_type=alpha_type,
        use_resampler=True, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        vision_config=dict(embed_dim=24, image_size=IMAGE_SIZE, patch_size=8, intermediate_size=40,
                           num_hidden_layers=2, num_attention_heads=2),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=3, resampler_depth=2, resampler_n_heads=2,
                              resampler_head_dim=8, qk_layer_norms_perceiver=qk_norms),
    )
    torch.manual_seed(seed)
    model = IdeficsForVisionText2Text(config).eval()
    with torch.no_grad():
        for layer in model.model.gated_cross_attn_layers:  # open gates, so the images matter
            layer.alpha_cross_attn.normal_()
            layer.alpha_dense.normal_()
        # Smaller rows keep the tiny model from generating <image> or an end of sequence, after which
        # transformers' generate keeps showing the last image while its processor's mask would not;
        # they still enter every compared logit.
        model.lm_head.additional_fc.weight.mul_(0.1)
        model.lm_head.weight[tokenizer.eos_token_id].mul_(0.1)
    model.save_pretrained(folder)
    IdeficsProcessor(IdeficsImageProcessor(image_size=IMAGE_SIZE), tokenizer).save_pretrained(folder)
    return folder


def images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 24, 3), dtype=np.uint8)) for i in range(count)]


def hf_inputs(src: Path) -> dict:
    """A two-image interleaved prompt, as IDEFICS's processor writes it; text before the first image and
    after an end of sequence sees no image (the processor's image_attention_mask)."""
    from transformers import IdeficsProcessor

    processor = IdeficsProcessor.from_pretrained(str(src))
    first, second = images(2)
    prompt = ["User:", first, f"Describe the image.\nAssistant: A red circle.{processor.tokenizer.eos_token}User:",
              second, "Which shape is it?\nAssistant:"]
    inputs = processor(text=[prompt], return_tensors="pt")
    sees = inputs["image_attention_mask"][0].any(-1).tolist()
    ids = inputs["input_ids"][0].tolist()
    after_eos = ids.index(processor.tokenizer.eos_token_id) + 1
    assert not sees[0] and sees[ids.index(processor.image_token_id)] and not sees[after_eos]
    return inputs


def lamm_batch(model, inputs: dict) -> Batch:
    """The same prompt for lamm: IDEFICS's token ids, the images through lamm's own encoder transform."""
    transform = model.media_specs()["image"].transform
    pixels = torch.stack([transform(image) for image in images(2)])
    assert torch.allclose(pixels, inputs["pixel_values"][0], atol=1e-6)  # same preprocessing as IDEFICS's
    return Batch(inputs["input_ids"], inputs["attention_mask"], None,
                 {"image": MediaBatch(pixels, torch.zeros(2, dtype=torch.long))})


def check_parity(src: Path, out: Path) -> None:
    from transformers import IdeficsForVisionText2Text

    hf = IdeficsForVisionText2Text.from_pretrained(str(src)).eval()
    model, _ = load_for_inference(out)
    inputs = hf_inputs(src)
    batch = lamm_batch(model, inputs)
    with torch.no_grad():
        expected = hf(**inputs).logits
        blind = hf(**{**inputs, "image_attention_mask": torch.zeros_like(inputs["image_attention_mask"])}).logits
        ours = model(batch, logits="all").logits[..., : expected.shape[-1]]  # HF's vocabulary (lamm adds tokens)
        hf.generation_config.eos_token_id = None  # 16 tokens from both, even past an end of sequence
        want = hf.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert (expected - blind).abs().max() > 0.1  # the cross-attention changes the prediction
    assert torch.allclose(ours, expected, atol=1e-4, rtol=0), (ours - expected).abs().max()
    want = want[:, inputs["input_ids"].shape[1]:]
    image_id = model.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id not in want and model.tokenizer.eos_token_id not in want  # see save_tiny_idefics
    assert len(set(want[0].tolist())) > 1  # not one token repeated
    got = model.generate(batch, max_new_tokens=16, eos_token_id=[])
    assert got.tolist() == want.tolist()


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, Path]:
    """float gates, a block before every second layer, q/k norms; imported through the console script."""
    tmp = tmp_path_factory.mktemp("idefics")
    src = save_tiny_idefics(tmp / "idefics", "float", interval=2, qk_norms=True, seed=0)
    out = tmp / "imported"
    result = subprocess.run([str(BIN / "lamm"), "import", "hf_idefics", str(src), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported hf_idefics {src} -> {out}" in " ".join(result.stdout.split())
    return src, out


def test_console_import_equals_transformers_logits_and_greedy_tokens(imported) -> None:
    src, out = imported
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "import.json", "llm", "vision",
                                                     "weights.safetensors"]
    check_parity(src, out)


def test_a_padded_batch_with_different_image_counts(imported) -> None:
    from transformers import IdeficsForVisionText2Text, IdeficsProcessor

    src, out = imported
    hf = IdeficsForVisionText2Text.from_pretrained(str(src)).eval()
    model, _ = load_for_inference(out)
    first, second, third = images(3)
    prompts = [["User:", first, "What is it?", second, "And this?\nAssistant:"], ["Look:", third, "Colour?"]]
    inputs = IdeficsProcessor.from_pretrained(str(src))(text=prompts, return_tensors="pt")
    transform = model.media_specs()["image"].transform
    pixels = torch.stack([transform(image) for image in (first, second, third)])
    batch = Batch(inputs["input_ids"], inputs["attention_mask"], None,
                  {"image": MediaBatch(pixels, torch.tensor([0, 0, 1]))})
    with torch.no_grad():
        expected = hf(**inputs).logits
        ours = model(batch, logits="all").logits[..., : expected.shape[-1]]
    real = inputs["attention_mask"].bool()
    assert not real.all()  # the second row is padded
    assert torch.allclose(ours[real], expected[real], atol=1e-4, rtol=0), (ours[real] - expected[real]).abs().max()


def test_vector_gates_and_a_block_before_every_layer(tmp_path) -> None:
    src = save_tiny_idefics(tmp_path / "idefics", "vector", interval=1, qk_norms=False, seed=1)
    out = import_checkpoint("hf_idefics", src, tmp_path / "imported")
    model, cfg = load_for_inference(out)
    assert cfg.model.fusion.gate == "vector" and sorted(model.fusion.blocks, key=int) == ["0", "1", "2", "3"]
    check_parity(src, out)


def test_lamm_chat_on_the_imported_folder(imported, tmp_path) -> None:
    _, out = imported
    picture = tmp_path / "picture.png"
    images(1)[0].save(picture)
    script = f"/image {picture}\nwhat is this?\n/quit\n"
    result = subprocess.run([str(BIN / "lamm-chat"), str(out), "--stats", "--max-new-tokens", "4"], input=script,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[turn 1]" in result.stderr and "media image=1" in result.stderr, result.stderr[-2000:]


def test_a_checkpoint_missing_a_gate_names_it_and_writes_nothing(imported, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from lamm.zoo import CheckpointKeyError

    src, _ = imported
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["model.gated_cross_attn_layers.1.alpha_dense"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointKeyError, match=r"missing key 'model.gated_cross_attn_layers.1.alpha_dense' in "
                                                 r".*broken$"):
        import_checkpoint("hf_idefics", broken, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no folder, no staging left


def test_lamm_writes_media_into_text_as_idefics_does(imported, tmp_path) -> None:
    """Interleaved text through lamm's own data pipeline gets IDEFICS's processor's token ids
    (<fake_token_around_image> around each image, shared between adjacent ones)."""
    from transformers import IdeficsProcessor

    from lamm.datasets.processor import Processor
    from lamm.datasets.sample import MediaRef, Sample, Turn
    from lamm.datasets.templates import get_template

    src, out = imported
    model, _ = load_for_inference(out)
    paths = []
    for i, image in enumerate(images(3)):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    sample = Sample("doc", [Turn("document", "User:<image>Describe both.<image><image>Answer:")],
                    [MediaRef("image", str(p), "image") for p in paths], kind="document")
    processor = Processor(model.tokenizer, get_template("document"), model.media_specs(), layout=model.fusion.layout,
                          training=False)
    ours = processor(sample).input_ids.tolist()
    first, second, third = images(3)
    theirs = IdeficsProcessor.from_pretrained(str(src))(
        text=[["User:", first, "Describe both.", second, third, "Answer:"]], return_tensors="pt")["input_ids"][0]
    # IDEFICS's processor starts with BOS; lamm's document template ends with EOS.
    assert ours == theirs.tolist()[1:] + [model.tokenizer.eos_token_id]
    assert model.placeholder_text("image") == "<fake_token_around_image><image><fake_token_around_image>"


def test_eos_ends_media_the_same_in_one_call_or_token_by_token(imported) -> None:
    _, out = imported
    model, _ = load_for_inference(out)
    tok = model.tokenizer
    image, eos = tok.convert_tokens_to_ids("<image>"), tok.eos_token_id
    ids = torch.tensor([[5, image, 7, eos, 8, 9, image, 10, eos, eos, 11], [eos, 5, image, image, 6, 7, 8, 9, 10, 11, 12]])
    media = {"image": model.encode_media({"image": MediaBatch(torch.zeros(4, 3, IMAGE_SIZE, IMAGE_SIZE),
                                                               torch.tensor([0, 0, 1, 1]))})["image"]}
    whole = model.fusion.layer_kwargs(model.fusion.begin(ids, media), ids)["lamm_xattn"].token_slot
    assert whole.tolist() == [[-1, 0, 0, 0, -1, -1, 1, 1, 1, -1, -1], [-1, -1, 0, 1, 1, 1, 1, 1, 1, 1, 1]]
    state = model.fusion.begin(ids, media)
    steps = [model.fusion.layer_kwargs(state, ids[:, t:t + 1])["lamm_xattn"].token_slot for t in range(ids.shape[1])]
    assert torch.equal(torch.cat(steps, 1), whole)


def test_unknown_idefics_option_values_are_one_line() -> None:
    from lamm.fusion.gated_xattn import GatedCrossAttentionFusion
    from lamm.projectors.perceiver import PerceiverResampler

    for option, message in [({"norm": "batch"}, "model.fusion.norm must be one of layer, rms, got 'batch'"),
                            ({"ffn": "geglu"}, "model.fusion.ffn must be one of gelu, swiglu, got 'geglu'"),
                            ({"gate": "matrix"}, "model.fusion.gate must be one of float, vector, got 'matrix'"),
                            ({"placement": "middle"}, "model.fusion.placement must be one of last, first, got 'middle'")]:
        with pytest.raises(ValueError, match=f"^{message}$"):
            GatedCrossAttentionFusion(32, 4, **option)
    with pytest.raises(ValueError, match="^model.projector.ff_act must be one of gelu, relu, got 'tanh'$"):
        PerceiverResampler(8, 16, ff_act="tanh")


def test_buffers_older_checkpoints_saved_are_left_out(imported, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src, _ = imported
    old = tmp_path / "old"
    shutil.copytree(src, old)
    weights = load_file(str(old / "model.safetensors"))
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    weights["model.vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    save_file(weights, str(old / "model.safetensors"), metadata={"format": "pt"})
    out = import_checkpoint("hf_idefics", old, tmp_path / "imported", verify=False)
    for part in ("llm", "vision"):
        with safe_open(str(out / part / "model.safetensors"), "pt") as f:
            assert not [k for k in f.keys() if k.endswith(("inv_freq", "position_ids"))]


def test_a_folder_that_is_not_idefics_is_refused_by_name(tmp_path) -> None:
    from lamm.zoo.idefics import IdeficsImportError

    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(IdeficsImportError, match=r"llama/config.json: model_type is 'llama', not 'idefics'"):
        import_checkpoint("hf_idefics", tmp_path / "llama", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lamm_eval_on_the_imported_folder(imported, tmp_path) -> None:
    """`lamm-eval checkpoint=OUT benchmark=shapes_ppl`, in this process (its console script is tested elsewhere)."""
    from lamm.testing import evaluate_run_in_process

    _, out = imported
    evaluate_run_in_process(out, tmp_path, "idefics")
