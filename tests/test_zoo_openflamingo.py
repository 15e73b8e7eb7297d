"""`lamm import openflamingo`: an imported OpenFlamingo computes exactly what OpenFlamingo computes.

The reference is OpenFlamingo's own code: the PyPI wheel installed with `--no-deps` into a temporary
folder (never vendored). A tiny OpenFlamingo is built by its `create_model_and_transforms` from a tiny
Llama folder and a tiny open_clip ViT folder, both saved by their libraries; its gates are set to
random non-zero values and its checkpoint saved as OpenFlamingo's training saves it (its own
`filter_state_dict_to_trainable`, then `torch.save`); the console script imports it.
"""
from __future__ import annotations

import importlib.machinery
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from lamm.batch import Batch, MediaBatch
from lamm.training.export import load_for_inference

BIN = Path(sys.executable).parent
WHEEL = "open-flamingo==2.0.1"
UNREACHABLE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
               "No matching distribution found for open-flamingo")
PROMPT = "<image>A red circle.<|endofchunk|><image>A blue"
CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
EVERY = 2  # cross-attention before layers 1 and 3 of the 4-layer LLM


class Payload:  # a pickled object: weights_only loading must refuse it
    pass


@pytest.fixture(scope="module")
def open_flamingo(tmp_path_factory):
    target = tmp_path_factory.mktemp("open_flamingo_wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                             WHEEL, "einops", "einops-exts"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        if any(s in result.stderr for s in UNREACHABLE):
            pytest.skip(f"PyPI is unreachable, cannot install {WHEEL}: {result.stderr.strip().splitlines()[-1]}")
        raise AssertionError(result.stderr[-2000:])
    sys.path.append(str(target))  # appended: the venv's own packages keep precedence
    import open_flamingo

    return open_flamingo


def _filter_to_trainable():
    """OpenFlamingo's own checkpoint filter. Its module imports wandb (a training-only dependency, not
    installed): a stand-in module is present only while it is imported."""
    stub = types.ModuleType("wandb")
    stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    sys.modules["wandb"] = stub
    try:
        from open_flamingo.train.train_utils import filter_state_dict_to_trainable
    finally:
        del sys.modules["wandb"]
    return filter_state_dict_to_trainable


@pytest.fixture(scope="module")
def flamingo(open_flamingo, tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    from lamm.llm.tiny import tiny_causal_lm, tiny_tokenizer

    root = tmp_path_factory.mktemp("openflamingo")
    tokenizer = tiny_tokenizer()
    tiny_causal_lm(len(tokenizer), hidden_size=64, num_layers=4).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    clip = root / "clip"  # an open_clip `local-dir` folder: its config and its weights
    clip.mkdir()
    (clip / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG}))
    torch.manual_seed(1)
    weights = open_clip.create_model(f"local-dir:{clip}").state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(clip / "open_clip_model.safetensors"))

    torch.manual_seed(2)
    model, image_processor, of_tokenizer = open_flamingo.create_model_and_transforms(
        f"local-dir:{clip}", None, str(root / "llm"), str(root / "llm"), cross_attn_every_n_layers=EVERY)
    model.eval()
    with torch.no_grad():
        for block in model.lang_encoder.gated_cross_attn_layers:
            if block is not None:
                block.attn_gate.uniform_(0.3, 0.9)
                block.ff_gate.uniform_(-0.9, -0.3)
    state = _filter_to_trainable()(model, model.state_dict())
    torch.save(state, root / "checkpoint.pt")

    out = root / "imported"
    result = subprocess.run([str(BIN / "lamm"), "import", "openflamingo", str(root / "checkpoint.pt"), str(out),
                             "--option", f"llm={root / 'llm'}", "--option", f"vision={clip}",
                             "--option", f"cross_attn_every_n_layers={EVERY}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported, _ = load_for_inference(out)
    return types.SimpleNamespace(root=root, clip=clip, model=model, tokenizer=of_tokenizer, state=state, out=out,
                                 imported=imported, image_processor=image_processor)


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _openflamingo_greedy(model, vision_x, ids, steps: int) -> list[int]:
    """Greedy decoding with OpenFlamingo's forward. Its `generate` cannot run on transformers 5.x
    (`generate` no longer hands `attention_mask` to the model's forward, which its LM mixin requires)."""
    new = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(vision_x, ids, attention_mask=torch.ones_like(ids)).logits
        token = int(logits[0, -1].argmax())
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
    return new


def test_logits_and_16_greedy_tokens_equal_openflamingos(flamingo):
    ids = flamingo.tokenizer(PROMPT, return_tensors="pt").input_ids
    ours = flamingo.imported
    assert ours.tokenizer(PROMPT, return_tensors="pt").input_ids.tolist() == ids.tolist()  # same ids for the same text
    images = _images(2, seed=0)
    vision_x = images[None, :, None]  # OpenFlamingo's [B, T_img, F, C, H, W]
    with torch.no_grad():
        theirs = flamingo.model(vision_x, ids, attention_mask=torch.ones_like(ids)).logits
    batch = Batch(ids, torch.ones_like(ids), None, {"image": MediaBatch(images, torch.zeros(2, dtype=torch.long))})
    with torch.no_grad():
        logits = ours(batch, logits="all").logits
    vocab = theirs.shape[-1]  # lamm's tokenizer also has <video> and <pointcloud> after OpenFlamingo's vocabulary
    assert torch.allclose(logits[..., :vocab], theirs, atol=1e-4, rtol=0), (logits[..., :vocab] - theirs).abs().max()
    # The comparison has teeth: other images move the logits far more than the tolerance.
    other = Batch(ids, torch.ones_like(ids), None,
                  {"image": MediaBatch(_images(2, seed=1), torch.zeros(2, dtype=torch.long))})
    with torch.no_grad():
        assert (ours(other, logits="all").logits - logits).abs().max() > 1e-2

    # All previous images instead of the latest (OpenFlamingo's only_attend_immediate_media=False, lamm's
    # only_latest_media=False): equal too, as every token of this prompt follows an image. (Before the
    # first image OpenFlamingo would attend to all images of the sample uniformly, later ones included;
    # lamm gives those tokens no media.)
    blocks = [b for b in flamingo.model.lang_encoder.gated_cross_attn_layers if b is not None]
    try:
        for block in blocks:
            block.attn.only_attend_immediate_media = False
        ours.fusion.only_latest_media = False
        with torch.no_grad():
            theirs_all = flamingo.model(vision_x, ids, attention_mask=torch.ones_like(ids)).logits
            logits_all = ours(batch, logits="all").logits
    finally:
        for block in blocks:
            block.attn.only_attend_immediate_media = True
        ours.fusion.only_latest_media = True
    assert torch.allclose(logits_all[..., :vocab], theirs_all, atol=1e-4, rtol=0)
    assert (theirs_all - theirs).abs().max() > 1e-3  # the second image's text now also sees the first

    expected = _openflamingo_greedy(flamingo.model, vision_x, ids, 16)
    generated = ours.generate(batch, max_new_tokens=16, eos_token_id=-1)[0].tolist()
    assert generated == expected

    # A user's picture becomes the same pixels: OpenFlamingo's image processor and the import's transform.
    import numpy as np
    from PIL import Image

    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    assert torch.equal(ours.media_specs()["image"].transform(picture), flamingo.image_processor(picture))

    record = json.loads((flamingo.out / "import.json").read_text())
    assert record["notes"]["decoder_layers"] == "model.layers"
    assert record["notes"]["cross_attention_layers"] == [1, 3]


def test_perceiver_time_embeddings_follow_each_mediums_position_in_its_sample(flamingo, open_flamingo):
    """OpenFlamingo's resampler with media-time and frame embeddings (its options; its released models
    have none) against lamm's perceiver fed by the model: position = the medium's index in its sample."""
    from open_flamingo.src.helpers import PerceiverResampler as TheirResampler

    from lamm.projectors.perceiver import PerceiverResampler

    torch.manual_seed(3)
    theirs = TheirResampler(dim=48, depth=2, num_latents=8, max_num_media=3, max_num_frames=1).eval()
    model = flamingo.imported
    ours = PerceiverResampler(48, 64, num_latents=8, depth=2, max_frames=1, max_media=3, out_proj=False)
    state = theirs.state_dict()
    state["media_time_embs"] = state["media_time_embs"][:, 0]  # [T, 1, D] -> [T, D]
    ours.load_state_dict(state)
    original = model.projectors["image"]
    model.projectors["image"] = ours.eval()
    try:
        images = _images(3, seed=4)  # sample 0 has two images, sample 1 one
        with torch.no_grad():
            tokens = model.encode_media({"image": MediaBatch(images, torch.tensor([0, 1, 0]))})["image"].tokens
            features = flamingo.model.vision_encoder(images)[1]  # OpenFlamingo's vision tokens
            padded = torch.stack([torch.stack([features[0], features[2]]), torch.stack([features[1], features[1]])])
            expected = theirs(padded[:, :, None])  # [B, T, F, v, D] -> [B, T, n, D]
    finally:
        model.projectors["image"] = original
    assert torch.allclose(tokens[0], expected[0, 0], atol=1e-5)
    assert torch.allclose(tokens[2], expected[0, 1], atol=1e-5)
    assert torch.allclose(tokens[1], expected[1, 0], atol=1e-5)


def test_a_training_checkpoint_with_a_named_open_clip_model_imports_the_same(flamingo, tmp_path):
    """OpenFlamingo's training script saves `{"model_state_dict": <DDP names>, ...}`; the vision tower can
    also be a CLIP file plus its open_clip model name (here a tiny config registered with open_clip)."""
    import open_clip
    from safetensors.torch import load_file

    from lamm.zoo import import_checkpoint

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-of-vit.json").write_text(json.dumps(CLIP_CFG))
    open_clip.add_model_config(tmp_path / "configs")
    training = {"epoch": 0, "model_state_dict": {f"module.{k}": v for k, v in flamingo.state.items()},
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}
    torch.save(training, tmp_path / "checkpoint_0.pt")
    out = import_checkpoint("openflamingo", tmp_path / "checkpoint_0.pt", tmp_path / "out", {
        "llm": str(flamingo.root / "llm"), "vision": str(flamingo.clip / "open_clip_model.safetensors"),
        "vision_model": "tiny-of-vit"})
    for name in ("weights.safetensors", "vision/visual.safetensors", "llm/model.safetensors"):
        ours, reference = load_file(str(out / name)), load_file(str(flamingo.out / name))
        assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours), name


def _bad_import(tmp_path: Path, flamingo, capsys, state=None, fmt="openflamingo", *options: str) -> str:
    from lamm.cli.main import main

    checkpoint = tmp_path / "checkpoint.pt"
    if state is not None:
        torch.save(state, checkpoint)
    capsys.readouterr()
    code = main(["import", fmt, str(checkpoint), str(tmp_path / "out"),
                 "--option", f"llm={flamingo.root / 'llm'}", "--option", f"vision={flamingo.clip}",
                 *(arg for option in options for arg in ("--option", option))])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no output, no staging folder
    return err[0]


def test_bad_checkpoints_are_refused_in_one_line_and_nothing_is_written(flamingo, tmp_path, capsys):
    gate = "lang_encoder.model.layers.3.gated_cross_attn_layer.attn_gate"
    without_gate = {k: v for k, v in flamingo.state.items() if k != gate}
    line = _bad_import(tmp_path, flamingo, capsys, without_gate)
    assert f"missing key '{gate}'" in line and "checkpoint.pt" in line

    to_q = "lang_encoder.model.layers.1.gated_cross_attn_layer.attn.to_q.weight"
    line = _bad_import(tmp_path, flamingo, capsys, {**flamingo.state, to_q: torch.zeros(512, 32)})
    assert f"key '{to_q}'" in line and "[512, 32]" in line and "[512, 64]" in line

    line = _bad_import(tmp_path, flamingo, capsys, {**flamingo.state, "extra": Payload()})
    assert "safely (weights only" in line and "checkpoint.pt" in line

    line = _bad_import(tmp_path, flamingo, capsys, flamingo.state, "openflamingo", "cross_attn_every_n_layers=4")
    assert "cross_attn_every_n_layers=4" in line and "every 2" in line

    line = _bad_import(tmp_path, flamingo, capsys, fmt="openflaming")
    assert "unknown checkpoint format 'openflaming'. Did you mean 'openflamingo'?" in line


def test_lamm_eval_and_lamm_chat_run_on_the_imported_folder(flamingo, tmp_path):
    synth = tmp_path / "synth"
    subprocess.run([str(BIN / "lamm"), "synth", "--out", str(synth), "--kinds", "shapes",
                    "--size", "train=1,test=4", "--image-size", "32"], check=True, capture_output=True, timeout=120)
    image = next(synth.rglob("*.png"))
    # Both at once: each spends most of its time importing, which two cores do in parallel.
    evaluation = subprocess.Popen(
        [str(BIN / "lamm-eval"), f"checkpoint={flamingo.out}", "benchmark=shapes_ppl", f"synth_root={synth}",
         "+benchmark.scenario.limit=4", "batch_size=2", f"output_dir={tmp_path / 'eval'}", "model.name=of"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    chat = subprocess.Popen([str(BIN / "lamm-chat"), str(flamingo.out), "--stats", "--max-new-tokens", "4"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    chat_out, _ = chat.communicate(f"/image {image}\nWhat colour is the shape?\n/quit\n", timeout=300)
    _, eval_err = evaluation.communicate(timeout=300)

    assert evaluation.returncode == 0, eval_err[-3000:]
    results = json.loads(next((tmp_path / "eval").rglob("results.json")).read_text())
    assert results["n"] == 4 and set(results["metrics"]) >= {"accuracy", "ece"}, results
    assert chat.returncode == 0, chat_out[-3000:]
    turns = re.findall(r"\[turn (\d+)\] prompt \d+ tokens; media (.+?); placeholders (.+?); reply (\d+) tokens",
                       chat_out)
    assert [t[:3] for t in turns] == [("1", "image=1", "image=1")] and 1 <= int(turns[0][3]) <= 4, chat_out[-2000:]


def test_final_norm_is_refused_for_towers_that_normalise_after_pooling():
    from lamm.registry import ENCODERS

    vision = {**CLIP_CFG["vision_cfg"], "final_ln_after_pool": True}
    with pytest.raises(ValueError, match=r"model.encoder.final_norm: .* applies ln_post after pooling"):
        ENCODERS.build("open_clip", model_cfg={"vision_cfg": vision}, layer=-1, final_norm=True)
    assert ENCODERS.build("open_clip", model_cfg={"vision_cfg": vision}, layer=-1).output_dim == 48
