"""LLaVA in and out: tiny LlavaForConditionalGeneration folders saved by transformers itself, imported
with `lamm import hf_llava` and compared logit for logit; runs exported with `lamm export --to hf_llava`
and loaded by plain transformers; the LLaVA repository's own layout (`llava_original`)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lamm.batch import Batch, MediaBatch
from lamm.datasets.sample import MediaRef, Sample, Turn
from lamm.datasets.templates import get_template
from lamm.llm.tiny import tiny_tokenizer
from lamm.testing import TINY_VISION_MEAN, TINY_VISION_STD, TINY_VISION_TOWER
from lamm.training.export import load_for_inference

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
QUESTION = "What colour is the shape?"
# A chat template written for typed contents ({"type": "image"} / {"type": "text"}), LLaVA-1.5's layout.
TYPED_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=600)


def _image(seed: int = 0, size: tuple[int, int] = (40, 28)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _save_llava(folder: Path, tower: str) -> Path:
    """A tiny random LlavaForConditionalGeneration + LlavaProcessor, saved by transformers."""
    import transformers as tf

    tok = tiny_tokenizer(512)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tower == "clip":
        vision = tf.CLIPVisionConfig(**TINY_VISION_TOWER)
        image_processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                image_mean=TINY_VISION_MEAN, image_std=TINY_VISION_STD)
        # llava-1.5's layout (vocabulary padded past the tokenizer, penultimate layer, CLS dropped), with
        # tied embeddings (as small LLaVAs have): the tied head also scores the existing <image> row.
        strategy, layer, vocab, extra, template, tied = "default", -2, 576, 1, TYPED_TEMPLATE, True
    else:
        vision = tf.SiglipVisionConfig(**TINY_VISION_TOWER)
        image_processor = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
        strategy, layer, vocab, extra, template, tied = "full", -1, len(tok), 0, None, False  # the tokenizer's ChatML
    text = tf.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                          initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    config = tf.LlavaConfig(vision_config=vision, text_config=text,
                            image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=layer,
                            vision_feature_select_strategy=strategy)
    torch.manual_seed(0)
    model = tf.LlavaForConditionalGeneration(config).eval()
    path = folder / tower
    model.save_pretrained(path)
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                  vision_feature_select_strategy=strategy, num_additional_image_tokens=extra,
                                  chat_template=template)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llava")
    return {tower: _save_llava(root, tower) for tower in ("clip", "siglip")}


@pytest.fixture(scope="module")
def imported(sources, tmp_path_factory) -> dict[str, Path]:
    from lamm.zoo import import_checkpoint

    root = tmp_path_factory.mktemp("imported")
    result = _run("lamm", "import", "hf_llava", str(sources["clip"]), str(root / "clip"))
    assert result.returncode == 0, result.stderr[-3000:]
    # The second one through Python (each console script costs a Python start-up).
    return {"clip": root / "clip", "siglip": import_checkpoint("hf_llava", sources["siglip"], root / "siglip")}


def _hf_inputs(src: Path, prompt_text: str):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(src)
    return processor(text=prompt_text, images=_image(), return_tensors="pt")


def _lamm_batch(model, inputs) -> Batch:
    pixels = model.media_specs()["image"].transform(_image()).unsqueeze(0)
    assert torch.equal(pixels, inputs["pixel_values"])  # the checkpoint's own image processor
    mask = inputs["attention_mask"]
    return Batch(inputs["input_ids"], mask, None, {"image": MediaBatch(pixels, torch.tensor([0]))})


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_imported_llava_equals_transformers(sources, imported, tower, tmp_path) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    src, out = sources[tower], imported[tower]
    model, cfg = load_for_inference(out)
    assert cfg.model.encoder.name == "hf_vision" and cfg.model.fusion.name == "prefix"
    assert cfg.data.template == "chat"
    # The prompt lamm renders for a question about an image is the checkpoint's own chat template's.
    sample = Sample("q", [Turn("user", f"<image>\n{QUESTION}")], [MediaRef("image", "x.png", "image")])
    lamm_text = "".join(s.text for s in get_template("chat", system_prompt="none").render(sample, model.tokenizer))
    processor = AutoProcessor.from_pretrained(src)
    if "type" in (processor.chat_template or ""):  # written for typed contents, as llava-hf processors are
        content = [{"type": "image"}, {"type": "text", "text": QUESTION}]
        hf_text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    else:  # only the tokenizer's (string contents, the image marker written in the text)
        hf_text = processor.tokenizer.apply_chat_template([{"role": "user", "content": f"<image>\n{QUESTION}"}],
                                                          add_generation_prompt=True, tokenize=False)
    assert lamm_text == hf_text
    inputs = _hf_inputs(src, hf_text)
    image_id = model.llm.media_token_ids["<image>"]
    assert int((inputs["input_ids"] == image_id).sum()) == model.media_specs()["image"].projected_tokens

    # lamm-chat's prompt for the same question and image is HF's, token for token and pixel for pixel.
    from lamm.chat.session import ChatSession

    _image().save(tmp_path / "image.png")
    session = ChatSession(model, cfg.data.template, cfg.data.system_prompt)
    session.attach("image", str(tmp_path / "image.png"))
    batch = session.batch(session.conversation(QUESTION))
    assert batch.input_ids.tolist() == inputs["input_ids"].tolist()
    assert torch.equal(batch.media["image"].data, inputs["pixel_values"])
    hf = LlavaForConditionalGeneration.from_pretrained(src).eval()
    with torch.no_grad():
        want = hf(**inputs).logits
        got = model(batch, logits="all").logits
    # The checkpoint's vocabulary: the rows past its tokenizer are padding (llava-1.5 pads to 32064), which
    # lamm's added media tokens take (their rows start at the mean embedding, so a tied head scores them so).
    vocab = len(processor.tokenizer)
    torch.testing.assert_close(got[..., :vocab], want[..., :vocab], atol=1e-4, rtol=0)
    _same_greedy_tokens(hf, inputs, model, batch)


def _same_greedy_tokens(hf, inputs, model, batch) -> None:
    """16 greedy tokens, EOS not stopping either side (a tiny random model says EOS early)."""
    hf.generation_config.eos_token_id = None
    hf_tokens = hf.generate(**inputs, max_new_tokens=16, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    lamm_tokens = model.generate(batch, max_new_tokens=16, eos_token_id=-1)[0]
    assert len(hf_tokens) == 16 and lamm_tokens.tolist() == hf_tokens.tolist()


# -- lamm-trained, fine-tuned from the import, and back to transformers --------------------------------

@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    result = _run("lamm", "synth", "--out", str(root), "--kinds", "shapes", "--size", "train=8,test=8",
                  "--image-size", "32")
    assert result.returncode == 0, result.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def finetuned(imported, synth, tmp_path_factory) -> Path:
    """3 lamm-train steps (projector + LoRA) on LAMM-format data, starting from the imported LLaVA, with
    images padded to a square (the user's override of the import's setting)."""
    tmp = tmp_path_factory.mktemp("finetune")
    result = _run("lamm-train", f"init_from={imported['clip']}", "data=lamm_2d",
                  f"data.path={synth / 'shapes' / 'train.json'}", "trainer.max_steps=3",
                  "model.encoder.pad_to_square=true",  # LLaVA-1.5's padding; the exporter writes it as do_pad
                  "data.batch_size=4",
                  "data.num_workers=0", "data.shuffle=false", "optim.lr=1e-2", "optim.warmup_steps=0",
                  f"paths.runs_dir={tmp / 'runs'}", "logger=[csv]", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = [p.parent for p in (tmp / "runs").glob("**/run.json")]
    return run


def _fixed_batch(model, synth: Path) -> Batch:
    from lamm.datasets.build import build_dataset
    from lamm.datasets.collate import build_collator

    cfg = {"name": "lamm", "path": str(synth / "shapes" / "train.json"), "template": "chat", "system_prompt": "none"}
    data = build_dataset(cfg, model.media_specs(), model.tokenizer, model.fusion.layout)
    return build_collator(model.tokenizer)([data[i] for i in range(4)])


def test_finetuning_the_import_lowers_the_loss(imported, finetuned, synth) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(finetuned / "config.yaml")
    assert cfg.model.encoder.name == "hf_vision" and cfg.model.policy.llm == "lora"
    assert cfg.data.template == "chat" and cfg.data.name == "lamm"  # the import's template, the user's data
    assert cfg.model.encoder.pad_to_square  # the user's override won over the import's
    before, _ = load_for_inference(imported["clip"])
    before.encoders["image"].transform.pad_to_square = True  # the same pixels as the run saw
    after, _ = load_for_inference(finetuned)
    with torch.no_grad():
        loss_before = before(_fixed_batch(before, synth)).loss.item()
        loss_after = after(_fixed_batch(after, synth)).loss.item()
    assert loss_after < loss_before - 0.1, (loss_before, loss_after)


def _hf_prompt(processor) -> str:
    """The question about one image, rendered by the folder's chat template (typed or string contents)."""
    if "type" in (processor.chat_template or ""):
        content = [{"type": "image"}, {"type": "text", "text": QUESTION}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor.tokenizer.apply_chat_template([{"role": "user", "content": f"<image>\n{QUESTION}"}],
                                                   add_generation_prompt=True, tokenize=False)


def test_exported_runs_load_in_transformers_with_lamm_logits(sources, imported, finetuned, tmp_path) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from lamm.zoo import export_checkpoint, import_checkpoint

    # The lamm-trained run (tied LLM, LoRA merged, images padded), through the console script.
    out = tmp_path / "trained_hf"
    result = _run("lamm", "export", "--to", "hf_llava", str(finetuned), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    # The untouched SigLIP import (untied LLM, every tower token kept): a round trip gives the source's logits.
    round_trip = export_checkpoint("hf_llava", imported["siglip"], tmp_path / "round_trip")
    for folder, run, source in ((out, finetuned, None), (round_trip, imported["siglip"], sources["siglip"])):
        processor = AutoProcessor.from_pretrained(folder)
        inputs = processor(text=_hf_prompt(processor), images=_image(), return_tensors="pt")
        hf = LlavaForConditionalGeneration.from_pretrained(folder).eval()
        model, _ = load_for_inference(run)
        batch = _lamm_batch(model, inputs)  # pixels equal too (LlavaImageProcessor's do_pad for the padded run)
        with torch.no_grad():
            want = model(batch, logits="all").logits
            got = hf(**inputs).logits
        if source is None:  # lamm's vocabulary (media tokens included) travels out whole
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
            assert hf.config.tie_word_embeddings and "type" in processor.chat_template  # the import's template
            _same_greedy_tokens(hf, inputs, model, batch)
            continue
        # An LM head resized for lamm's media tokens gets random rows at each build (they are not weights
        # the import holds): compared on the source's vocabulary.
        vocab = len(AutoProcessor.from_pretrained(source).tokenizer)
        torch.testing.assert_close(got[..., :vocab], want[..., :vocab], atol=1e-4, rtol=0)
        with torch.no_grad():
            original = LlavaForConditionalGeneration.from_pretrained(source).eval()
            torch.testing.assert_close(got[..., :vocab], original(**inputs).logits, atol=1e-5, rtol=0)
        # The export is in transformers' current layout (`model.language_model.*`), the sources in the
        # older one (`language_model.model.*`): hf_llava reads both.
        again, _ = load_for_inference(import_checkpoint("hf_llava", folder, tmp_path / "again"))
        with torch.no_grad():
            again_logits = again(_lamm_batch(again, inputs), logits="all").logits
        torch.testing.assert_close(again_logits[..., :vocab], want[..., :vocab], atol=1e-5, rtol=0)


def test_exporting_another_architecture_is_refused_in_one_line(tmp_path, capsys) -> None:
    from omegaconf import OmegaConf

    from lamm.cli.main import main
    from lamm.config import compose

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(compose("train", ["model/llm=tiny_random"])))
    assert main(["export", "--to", "hf_llava", str(run), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.encoder is small_cnn, LLaVA needs hf_vision" in err[0], err
    assert not (tmp_path / "out").exists()


# -- lamm-eval and lamm-chat on the imported folder -----------------------------------------------------

def test_eval_and_chat_read_the_import(imported, synth, tmp_path, monkeypatch, capsys) -> None:
    from lamm.cli.chat import main as chat_main

    from lamm.cli.eval import run as lamm_eval
    from lamm.config import compose

    out = imported["clip"]
    # `lamm-eval checkpoint=OUT ...`, in this process (its console script is tested elsewhere).
    result = lamm_eval(compose("eval", ["benchmark=shapes_ppl", "+benchmark.scenario.limit=4", "batch_size=4",
                                        f"checkpoint={out}", f"synth_root={synth}",
                                        f"output_dir={tmp_path / 'eval'}", "model.name=llava"]))
    assert result["n"] == 4 and (tmp_path / "eval" / "llava" / "shapes_ppl" / "results.json").is_file()
    image = synth / "shapes" / "images" / "test" / "000000.png"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {image}\n{QUESTION}\n/quit\n"))
    assert chat_main([str(out), "--max-new-tokens", "4", "--stats"]) == 0  # lamm-chat OUT, in this process
    said = capsys.readouterr()
    notes = said.out + said.err
    assert "template chat" in notes and "placeholders image=16;" in notes, notes[-2000:]


# -- the LLaVA repository's own layout ------------------------------------------------------------------

class Payload:  # a pickled object: a checkpoint holding one must never be unpickled
    pass


def _mm_config(vision: Path) -> dict:
    return {"mm_vision_tower": str(vision), "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 32,
            "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
            "mm_use_im_start_end": False, "tune_mm_mlp_adapter": False}


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict:
    """A LlavaLlamaForCausalLM folder, a stage-1 mm_projector.bin and its base LLM, in LLaVA's layout."""
    import transformers as tf

    from lamm.testing import save_tiny_vision_tower

    root = tmp_path_factory.mktemp("original")
    vision = save_tiny_vision_tower("clip_full", root)  # openai's CLIP folders hold both towers
    tok = tiny_tokenizer(512)
    text = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                          initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    llm = tf.LlamaForCausalLM(text).eval()
    projector = {f"model.mm_projector.{i}.{kind}": torch.randn(*shape) * 0.2
                 for i, cols in ((0, 32), (2, 64)) for kind, shape in (("weight", (64, cols)), ("bias", (64,)))}
    full = root / "llava-v1.5-tiny"
    full.mkdir()
    config = {**text.to_dict(), "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
              **_mm_config(vision)}
    (full / "config.json").write_text(json.dumps(config))
    tensors = {**{k: v.contiguous() for k, v in llm.state_dict().items()}, **projector}
    save_file(tensors, str(full / "model.safetensors"))
    tok.save_pretrained(full)
    # A folder that saved its tower too (LLaVA's layout once the tower is unfrozen or merged).
    with_tower = root / "llava-v1.5-tiny-tower"
    with_tower.mkdir()
    (with_tower / "config.json").write_text(json.dumps(config))
    tower = tf.CLIPVisionModel.from_pretrained(vision).state_dict()
    tensors.update({f"model.vision_tower.vision_tower.vision_model.{k}": v.contiguous() for k, v in tower.items()})
    save_file(tensors, str(with_tower / "model.safetensors"))
    tok.save_pretrained(with_tower)
    base = root / "vicuna-tiny"
    llm.save_pretrained(base)
    tok.save_pretrained(base)
    stage1 = root / "stage1"
    stage1.mkdir()
    (stage1 / "config.json").write_text(json.dumps(config))
    torch.save(projector, stage1 / "mm_projector.bin")
    return {"vision": vision, "full": full, "full_tower": with_tower, "base": base,
            "stage1": stage1 / "mm_projector.bin", "llm": llm,
            "projector": projector}


def _reference_logits(original: dict, model, input_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """LLaVA's forward written out: CLIP layer -2 without CLS -> Linear-GELU-Linear -> into the LLM's inputs."""
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(original["vision"]).eval()
    p = original["projector"]
    with torch.no_grad():
        feats = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        hidden = torch.nn.functional.gelu(feats @ p["model.mm_projector.0.weight"].T + p["model.mm_projector.0.bias"])
        projected = hidden @ p["model.mm_projector.2.weight"].T + p["model.mm_projector.2.bias"]
        is_image = input_ids == model.llm.media_token_ids["<image>"]
        embeds = original["llm"].get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        embeds[is_image] = projected.reshape(-1, embeds.shape[-1])
        return original["llm"](inputs_embeds=embeds).logits


@pytest.mark.parametrize("layout", ["full", "full_tower", "stage1"])
def test_llava_original_loads_completely(original, layout, tmp_path) -> None:
    from lamm.benchmarks.render import Renderer
    from lamm.zoo import import_checkpoint, read_import_record

    options = {"llm": str(original["base"]), "vision": str(original["vision"])} if layout == "stage1" else {}
    out = import_checkpoint("llava_original", original[layout], tmp_path / "out", options)
    notes = read_import_record(out)["notes"]
    assert notes["tower_from"] == ("checkpoint" if layout == "full_tower" else "vision folder")
    assert notes["mm_projector_type"] == "mlp2x_gelu"
    model, cfg = load_for_inference(out)
    assert cfg.model.encoder.pad_to_square and cfg.model.encoder.layer == -2 and cfg.model.projector.depth == 2
    # LLaVA-1.5's vicuna_v1 conversation, rendered by lamm's chat template.
    renderer = Renderer(model, "chat", "none")
    sample = Sample("q", [Turn("user", f"<image>\n{QUESTION}")], [MediaRef("image", "x.png", "image")])
    text = "".join(s.text for s in renderer.template.render(sample, model.tokenizer))
    assert text == ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the human's questions. "
                    f"USER: <image>\n{QUESTION} ASSISTANT:")
    pixels = model.media_specs()["image"].transform(_image()).unsqueeze(0)
    k = model.media_specs()["image"].projected_tokens
    ids = model.tokenizer(f"USER: {'<image>' * k}\n{QUESTION} ASSISTANT:", return_tensors="pt").input_ids
    batch = Batch(ids, torch.ones_like(ids), None, {"image": MediaBatch(pixels, torch.tensor([0]))})
    with torch.no_grad():
        got = model(batch, logits="all").logits
    want = _reference_logits(original, model, ids, pixels)
    torch.testing.assert_close(got[..., :want.shape[-1]], want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("corruption,message", [
    ("missing", "missing key 'model.mm_projector.2.bias'"),
    ("shape", "key 'model.mm_projector.0.weight' in {file} has shape [64, 16], expected [64, 32]"),
    ("pickle", "cannot read {file} safely (weights only, no pickled objects)"),
])
def test_corrupted_original_checkpoints_fail_in_one_line(original, corruption, message, tmp_path, capsys) -> None:
    from lamm.cli.main import main

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text((original["stage1"].parent / "config.json").read_text())
    state = dict(original["projector"])
    if corruption == "missing":
        del state["model.mm_projector.2.bias"]
    elif corruption == "shape":
        state["model.mm_projector.0.weight"] = torch.zeros(64, 16)
    else:
        state["model.mm_projector.extra"] = Payload()
    file = folder / "mm_projector.bin"
    torch.save(state, file)
    out = tmp_path / "out"
    code = main(["import", "llava_original", str(file), str(out), "--option", f"llm={original['base']}",
                 "--option", f"vision={original['vision']}"])  # `lamm import ...`, in this process
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("lamm import: error:"), err
    assert message.format(file=file) in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing written, no staging left


def test_dtype_option_and_bad_options(sources, tmp_path, capsys) -> None:
    from lamm.cli.main import main
    from lamm.zoo.llava import import_hf_llava

    plan = import_hf_llava(sources["clip"], dtype="bfloat16")
    assert {"model.llm.dtype=bfloat16", "model.encoder.dtype=bfloat16"} <= set(plan.overrides)
    assert {"model.projector.bias=true", "model.encoder.layer=-2", "model.encoder.select=patch"} <= set(plan.overrides)
    for option, message in (("dtype=float8", "--option dtype=float8: expected one of float32, bfloat16, float16"),
                            ("llm=/x", "--option llm: format hf_llava takes no such option (its options: dtype)")):
        assert main(["import", "hf_llava", str(sources["clip"]), str(tmp_path / "out"), "--option", option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()

