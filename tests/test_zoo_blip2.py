"""hf_blip2: a tiny Blip2ForConditionalGeneration saved by transformers, imported by `lamm import`, same logits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
QUERIES = 4
PROMPT = "Question: what colour is the shape? Answer:"


def _tiny_blip2(folder: Path, text_config=None) -> Path:
    """A random tiny BLIP-2 (ViT + Q-Former + OPT) and its processor, as transformers saves them."""
    import transformers as tf

    from lamm.llm.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    processor = tf.Blip2Processor(image_processor=tf.BlipImageProcessor(size={"height": 32, "width": 32}),
                                  tokenizer=tokenizer, num_query_tokens=QUERIES)  # adds the "<image>" token
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if text_config is None:
        text_config = tf.OPTConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                   num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    config = tf.Blip2Config(
        vision_config=tf.Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8),
        qformer_config=tf.Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64),
        text_config=text_config, num_query_tokens=QUERIES, image_token_index=image_token)
    path = folder / "blip2"
    if text_config.is_encoder_decoder:  # refused from its config alone
        config.save_pretrained(path)
        return path
    model = tf.Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # away from the initialisation's zeros and ones, so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blip2")
    src = _tiny_blip2(tmp)
    out = tmp / "imported"
    result = subprocess.run([str(BIN / "lamm"), "import", "hf_blip2", str(src), str(out)], capture_output=True,
                            text=True, timeout=300, env=ENV, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return src, out


def test_logits_and_greedy_tokens_equal_transformers(imported) -> None:
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from lamm.batch import Batch, MediaBatch
    from lamm.training.export import load_for_inference

    src, out = imported
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "weights.safetensors", "import.json", "vision", "llm"}
    record = json.loads((out / "import.json").read_text())
    assert record["format"] == "hf_blip2" and record["notes"]["language_model"] == "opt"

    hf = Blip2ForConditionalGeneration.from_pretrained(src).eval()
    processor = Blip2Processor.from_pretrained(src)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    inputs = processor(images=image, text=PROMPT, return_tensors="pt")

    model, cfg = load_for_inference(out)
    assert cfg.model.projector.name == "qformer" and cfg.model.encoder.name == "hf_vision"
    image_id = hf.config.image_token_id
    assert model.llm.media_token_ids["<image>"] == image_id  # the checkpoint's own image token is lamm's
    pixels = model.media_specs()["image"].transform(image).unsqueeze(0)
    assert torch.equal(pixels, inputs["pixel_values"])  # the checkpoint's image processor
    prompt_ids = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(inputs["input_ids"], torch.cat([torch.full((1, QUERIES), image_id), prompt_ids], 1))

    batch = Batch(inputs["input_ids"], inputs["attention_mask"], media={"image": MediaBatch(pixels, torch.tensor([0]))})
    with torch.no_grad():
        theirs = hf(**inputs).logits
        ours = model(batch, logits="all").logits
    vocab = theirs.shape[-1]
    keep = torch.ones(vocab, dtype=torch.bool)
    keep[image_id] = False  # lamm resets the media tokens' rows (tied to the LM head); never generated
    assert ours.shape[-1] >= vocab
    torch.testing.assert_close(ours[..., :vocab][..., keep], theirs[..., keep], atol=1e-4, rtol=0)

    no_eos = -1  # 16 tokens on both sides, whatever the random model writes
    with torch.no_grad():
        hf_tokens = hf.generate(**inputs, max_new_tokens=16, do_sample=False, eos_token_id=no_eos,
                                pad_token_id=processor.tokenizer.pad_token_id)[:, -16:]
        our_tokens = model.generate(batch, max_new_tokens=16, eos_token_id=no_eos)
    assert our_tokens.shape == (1, 16)
    assert our_tokens.tolist() == hf_tokens.tolist()


def test_t5_blip2_and_broken_checkpoints_are_refused(tmp_path, capsys) -> None:
    import transformers as tf
    from safetensors.torch import load_file, save_file

    from lamm.cli.main import main

    t5 = tf.T5Config(vocab_size=600, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
    src = _tiny_blip2(tmp_path / "t5", text_config=t5)
    assert main(["import", "hf_blip2", str(src), str(tmp_path / "out")]) == 2  # the `lamm` script's main
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("lamm import: error: ") and \
        "t5 (encoder-decoder) language model" in errors[0], errors
    assert not (tmp_path / "out").exists()

    from lamm.zoo import CheckpointKeyError, import_checkpoint

    good = _tiny_blip2(tmp_path / "opt")
    tensors = load_file(str(good / "model.safetensors"))
    key = "qformer.encoder.layer.1.attention.attention.query.weight"
    for name, broken in (("missing", {k: v for k, v in tensors.items() if k != key}),
                         ("shape", {**tensors, key: tensors[key][:, :8].contiguous()}),
                         ("extra", {**tensors, "qformer.surprise.weight": torch.zeros(2)})):
        save_file(broken, str(good / "model.safetensors"))
        with pytest.raises(CheckpointKeyError) as err:
            import_checkpoint("hf_blip2", good, tmp_path / f"out_{name}")
        assert "\n" not in str(err.value) and ("surprise" if name == "extra" else key) in str(err.value)
        assert not (tmp_path / f"out_{name}").exists() and not list(tmp_path.glob(".out_*"))
    # Older checkpoints carry the Q-Former's text branch (unused for generation): read past, counted.
    text_branch = {"qformer.encoder.layer.0.intermediate.dense.weight": torch.zeros(64, 32),
                   "qformer.encoder.layer.0.output.LayerNorm.bias": torch.zeros(32)}
    save_file({**tensors, **text_branch}, str(good / "model.safetensors"))
    out = import_checkpoint("hf_blip2", good, tmp_path / "out_text", verify=False)
    assert json.loads((out / "import.json").read_text())["notes"]["qformer_text_branch_skipped"] == 2


def test_blip2_template_writes_blip2s_prompt() -> None:
    from lamm.datasets.sample import PLACEHOLDERS, Sample, Turn
    from lamm.datasets.templates import get_template
    from lamm.llm.tiny import tiny_tokenizer

    tokenizer, image = tiny_tokenizer(), PLACEHOLDERS["image"]
    vqa = Sample("s", [Turn("user", f"{image}\nwhat colour is the shape?"), Turn("assistant", "red")])
    segments = get_template("blip2").render(vqa, tokenizer)
    assert [(s.text, s.train) for s in segments] == [(image + PROMPT, False), (" red" + tokenizer.eos_token, True)]
    caption = Sample("c", [Turn("user", image), Turn("assistant", "a red star")])
    assert "".join(s.text for s in get_template("blip2").render(caption, tokenizer)) == \
        image + "a red star" + tokenizer.eos_token  # stage 2: the queries alone prompt the caption
    assert get_template("blip2").reply(" red ") == "red"


def test_blip2_finetune_recipe_trains_the_qformer_from_the_import(imported, tmp_path) -> None:
    """`lamm-train experiment=blip2_finetune init_from=<import>`: 2 steps; only the Q-Former moves."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    result = subprocess.run([str(BIN / "lamm"), "synth", "--out", str(tmp_path / "data"), "--kinds", "shapes",
                             "--size", "train=8,test=8", "--image-size", "32"], capture_output=True, text=True,
                            env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    _, out = imported
    result = subprocess.run([str(BIN / "lamm-train"), "experiment=blip2_finetune", f"init_from={out}", "debug=fast",
                             "trainer=cpu", "trainer.max_steps=2", "data.global_batch_size=null",
                             f"data.path={tmp_path / 'data' / 'shapes' / 'train.json'}", "optim.warmup_steps=0",
                             "optim.lr=1e-3", f"paths.runs_dir={tmp_path / 'runs'}", "logger=[csv]"],
                            capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = [p.parent for p in (tmp_path / "runs").glob("**/run.json")]
    cfg = OmegaConf.load(run / "config.yaml")
    assert (cfg.data.template, cfg.model.projector.name, cfg.model.policy.llm) == ("blip2", "qformer", "frozen")
    assert cfg.model.projector.num_query_tokens == QUERIES and cfg.optim.lr == 1e-3
    before = load_file(str(out / "weights.safetensors"))
    after = load_file(str(next(run.glob("export/*.safetensors"))))
    moved = [k for k in before if k.startswith("projectors.") and k in after and not torch.equal(before[k], after[k])]
    assert moved, "the Q-Former did not train"


def test_init_from_an_import_works_with_any_data_group(imported, tmp_path) -> None:
    """data=mixture and data=interleaved have no data.template: they start from the import all the same, one
    stderr line saying its template (blip2) is unused (a chat data config takes it: the fine-tune test above)."""
    _, out = imported
    for group, paths in (("mixture", ["data.datasets.0.path=/a.json", "data.datasets.1.path=/b.json"]),
                         ("interleaved", ["data.path=/docs.jsonl"])):
        result = subprocess.run([str(BIN / "lamm-train"), f"init_from={out}", f"data={group}", *paths,
                                 "--cfg", "job"], capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "name: qformer" in result.stdout and f"name: {group}" in result.stdout
        unused = [line for line in result.stderr.splitlines() if "data.template=blip2 is not used" in line]
        assert "template: blip2" not in result.stdout and len(unused) == 1, result.stderr[-2000:]


def test_lamm_eval_and_lamm_chat_on_the_import(imported, tmp_path, monkeypatch, capsys) -> None:
    """`lamm-eval checkpoint=OUT` and `lamm-chat OUT`, in this process (their console scripts are tested elsewhere)."""
    import io

    from lamm.cli.chat import main as chat_main
    from lamm.testing import evaluate_run_in_process

    _, out = imported
    synth = evaluate_run_in_process(out, tmp_path, "blip2")
    image = synth / "shapes" / "images" / "test" / "000000.png"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {image}\nwhat is it?\n/quit\n"))
    assert chat_main([str(out), "--max-new-tokens", "4", "--stats"]) == 0
    said = capsys.readouterr()
    assert "template blip2" in said.out + said.err, (said.out + said.err)[-2000:]
