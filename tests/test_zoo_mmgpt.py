"""Multimodal-GPT: `lamm import mmgpt` (its LoRA on an imported OpenFlamingo), the `multimodal_gpt` recipe
trained from it (every trainable tensor gets a gradient; frozen zero gates are refused), export ->
init_from reproducing the logits, and its prompt template byte for byte.

The base here is a tiny OpenFlamingo-shaped lamm model (open_clip -> perceiver -> gated_xattn before
every 2nd of 4 layers of the tiny random Llama), imported through a test-only format with random
non-zero gates; the synthetic Multimodal-GPT checkpoint uses its key layout (`module.` from DDP, peft's
`lang_encoder.base_model.model.` wrapper, FlamingoLayer's `decoder_layer` / `gated_cross_attn_layer`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lamm.batch import Batch, MediaBatch
from lamm.registry import CHECKPOINT_FORMATS
from lamm.training.export import init_from_run, load_for_inference
from lamm.zoo import ImportPlan, import_checkpoint, open_state

BIN = Path(sys.executable).parent
ARCH = [
    "model/encoder=clip_vit_l14", "model.encoder.model_cfg={vision_cfg:{image_size:32,patch_size:8,width:64,layers:2,"
    "head_width:32}}", "model.encoder.image_size=null", "model.encoder.layer=-1",
    "model/projector=perceiver", "model.projector.num_latents=4", "model.projector.depth=1", "model.projector.heads=2",
    "model.projector.dim_head=16", "model/fusion=gated_xattn", "model.fusion.every=2", "model.fusion.heads=2",
    "model.fusion.dim_head=16", "model.fusion.ff_mult=2", "model.fusion.output_scale=none", "model/llm=tiny_random",
    "model/policy=align",
]
RANK, ALPHA = 4, 8.0
LM = "module.lang_encoder.base_model.model.model.layers."
# Multimodal-GPT's targets as OpenFlamingo names them -> (lamm module under the block or layer, [out, in]).
LLM_LORA = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
            "self_attn.o_proj": (64, 64)}
XATTN_LORA = {"attn.to_q": ("to_q", (32, 64)), "attn.to_kv": ("to_kv", (64, 64)), "attn.to_out": ("to_out", (64, 32)),
              "ff.1": ("ff_in", (128, 64)), "ff.3": ("ff_out", (64, 128))}
XATTN_LAYERS = (1, 3)
PROMPT = "<image>A red circle.<|endofchunk|><image>A blue"


class Payload:  # a pickled object: the importer must refuse it, never unpickle it
    pass


def _lamm(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=600)


def _write_mmgpt_data(folder: Path) -> None:
    """Multimodal-GPT's joint data: Alpaca-style language-only records and image instructions."""
    from PIL import Image

    folder.mkdir()
    for name, colour in (("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))):
        Image.new("RGB", (40, 40), colour).save(folder / name)
    (folder / "alpaca.json").write_text(json.dumps(
        [{"instruction": f"Count to {n}.", "input": "", "output": " ".join(map(str, range(n)))} for n in range(1, 9)]))
    (folder / "vl.json").write_text(json.dumps(
        [{"image": f"{c}.png", "instruction": "What colour is it?", "output": c} for c in ("red", "blue") * 4]))


def _mmgpt_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    """Random LoRA tensors in Multimodal-GPT's saved layout (peft before adapter names: `lora_A.weight`)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(4):
        for module, (out, inp) in LLM_LORA.items():
            state[f"{LM}{i}.decoder_layer.{module}.lora_A.weight"] = torch.randn(RANK, inp, generator=g) * 0.2
            state[f"{LM}{i}.decoder_layer.{module}.lora_B.weight"] = torch.randn(out, RANK, generator=g) * 0.2
    for i in XATTN_LAYERS:
        for module, (_, (out, inp)) in XATTN_LORA.items():
            state[f"{LM}{i}.gated_cross_attn_layer.{module}.lora_A.weight"] = torch.randn(RANK, inp, generator=g) * 0.2
            state[f"{LM}{i}.gated_cross_attn_layer.{module}.lora_B.weight"] = torch.randn(out, RANK, generator=g) * 0.2
    return state


def _popen(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train_argv(root: Path, init_from: str, *extra: str) -> list[str]:
    language, vision = root / "data" / "alpaca.json", root / "data" / "vl.json"
    return ["experiment=multimodal_gpt", f"init_from={init_from}", *extra, "debug=fast", "trainer=cpu",
            "trainer.max_steps=2", f"data.datasets.0.path={language}", f"data.datasets.1.path={vision}",
            f"data.datasets.1.root={root / 'data'}", f"paths.runs_dir={root / 'runs' / init_from.replace('/', '_')}",
            f"paths.data_dir={root / 'synth'}"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The imports, and the two lamm-train runs started as soon as they can (each console script spends
    most of its time starting up, which runs beside the tests' in-process work)."""
    from types import SimpleNamespace

    from lamm.build import build_model
    from lamm.config import compose

    def toy_openflamingo(src: Path) -> ImportPlan:
        state = open_state(src)
        weights = {k: state.take(k) for k in state.keys()}
        return ImportPlan(overrides=list(ARCH), weights=weights, notes={"decoder_layers": "model.layers"})

    if "toy_openflamingo" not in CHECKPOINT_FORMATS:
        CHECKPOINT_FORMATS.register("toy_openflamingo")(toy_openflamingo)
    root = tmp_path_factory.mktemp("mmgpt")
    _write_mmgpt_data(root / "data")
    # Without init_from the recipe's frozen gates are 0: refused (its `required: init_from` lifted, so the
    # gate check itself speaks).
    refusal = _popen("lamm-train", *_train_argv(root, "null", *ARCH, "model.encoder.allow_random_frozen=true",
                                                 "required.init_from=null"))
    torch.manual_seed(0)
    model = build_model(compose("train", ARCH).model)
    tensors = {k: (torch.empty_like(v).uniform_(0.3, 0.9) if k.endswith("_gate") else v)
               for k, v in model.state_dict().items()
               if k.startswith(("fusion.", "projectors.", "encoders.")) or k == "llm.media_token_embedding"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(root / "openflamingo.safetensors"))
    base = import_checkpoint("toy_openflamingo", root / "openflamingo.safetensors", root / "openflamingo")
    torch.save({"model_state_dict": _mmgpt_checkpoint(seed=1)}, root / "mmgpt-lora.pt")
    result = _lamm("lamm", "import", "mmgpt", str(root / "mmgpt-lora.pt"), str(root / "mmgpt"),
                   "--option", f"base={base}", "--option", f"alpha={ALPHA}")
    assert result.returncode == 0, result.stderr[-3000:]
    training = _popen("lamm-train", *_train_argv(root, str(root / "mmgpt")))
    yield SimpleNamespace(root=root, base=root / "openflamingo", mmgpt=root / "mmgpt", refusal=refusal,
                          training=training)
    for process in (refusal, training):
        if process.poll() is None:
            process.kill()
            process.communicate()


def _batch(model, seed: int = 0) -> Batch:
    ids = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return Batch(ids, torch.ones_like(ids), None, {"image": MediaBatch(images, torch.zeros(2, dtype=torch.long))})


def _logits(model, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_batch(model, seed), logits="all").logits


def test_import_is_the_base_plus_its_lora_merged_by_hand(zoo):
    merged, _ = load_for_inference(zoo.base)
    base_logits = _logits(merged)
    state = _mmgpt_checkpoint(seed=1)
    with torch.no_grad():  # W += alpha / r * B @ A, peft's LoRA written out
        for i in range(4):
            for module in LLM_LORA:
                linear = merged.llm.causal_lm.get_submodule(f"model.layers.{i}.{module}")
                key = f"{LM}{i}.decoder_layer.{module}.lora_"
                linear.weight += ALPHA / RANK * state[key + "B.weight"] @ state[key + "A.weight"]
        for i in XATTN_LAYERS:
            for module, (ours, _) in XATTN_LORA.items():
                linear = merged.fusion.blocks[str(i)].get_submodule(ours)
                key = f"{LM}{i}.gated_cross_attn_layer.{module}.lora_"
                linear.weight += ALPHA / RANK * state[key + "B.weight"] @ state[key + "A.weight"]
    imported, cfg = load_for_inference(zoo.mmgpt)
    expected, got = _logits(merged), _logits(imported)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    assert (got - base_logits).abs().max() > 1e-2  # the LoRA (LLM and cross-attention) changes what it computes
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (RANK, ALPHA, 0.0)
    assert list(cfg.model.lora.targets) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert list(cfg.model.lora.fusion_targets) == ["ff_in", "ff_out", "to_kv", "to_out", "to_q"]
    assert dict(cfg.model.policy) == {"encoder": "frozen", "projector": "frozen", "fusion": "lora", "llm": "lora",
                                      "media_tokens": "frozen"}
    record = json.loads((zoo.mmgpt / "import.json").read_text())
    assert record["notes"]["base"] == str(zoo.base.resolve()) and record["notes"]["lora_tensors"] == 52


def test_its_pickled_training_config_is_read_as_data_and_never_run(zoo, tmp_path, monkeypatch):
    """Multimodal-GPT saves `tuning_config` (an mmengine Config) beside the tensors: classes of that name,
    made here for the save, are absent when lamm reads the file; their data gives lora_alpha."""
    import types

    class ConfigDict(dict):
        pass

    class Config:
        def __init__(self, data):
            self.data = ConfigDict(data)

        def __getstate__(self):
            return (self.data, "configs/lora_config.py")

        def __setstate__(self, state):
            raise AssertionError("the pickled config's own code ran")

    module = types.ModuleType("mmengine.config.config")
    for cls in (ConfigDict, Config):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    for name in ("mmengine", "mmengine.config"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    config = Config({"tuning_config": ConfigDict(lora=True, lora_r=RANK, lora_alpha=ALPHA, lora_dropout=0.0)})
    torch.save({"model_state_dict": _mmgpt_checkpoint(seed=1), "tuning_config": config}, tmp_path / "final_weights.pt")
    for name in ("mmengine", "mmengine.config", module.__name__):  # gone when lamm reads the file
        monkeypatch.delitem(sys.modules, name)
    out = import_checkpoint("mmgpt", tmp_path / "final_weights.pt", tmp_path / "out", {"base": str(zoo.base)})
    record = json.loads((out / "import.json").read_text())
    assert record["notes"]["lora_settings_from"] == "tuning_config" and record["notes"]["alpha"] == ALPHA
    assert (out / "weights.safetensors").read_bytes() == (zoo.mmgpt / "weights.safetensors").read_bytes()


def _bad_import(tmp_path: Path, zoo, capsys, state=None, options=None) -> str:
    from lamm.cli.main import main

    checkpoint = tmp_path / "mmgpt-lora.pt"
    if state is not None:
        torch.save(state, checkpoint)
    capsys.readouterr()
    options = [f"base={zoo.base}"] if options is None else options
    flags = [a for o in options for a in ("--option", o)]
    code = main(["import", "mmgpt", str(checkpoint), str(tmp_path / "out"), *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmgpt-lora.pt"]  # no output, no staging folder
    return err[0]


def test_bad_checkpoints_are_one_line_and_write_nothing(zoo, tmp_path, capsys):
    key = f"{LM}3.gated_cross_attn_layer.attn.to_kv.lora_B.weight"
    state = _mmgpt_checkpoint(seed=1)
    del state[key]
    line = _bad_import(tmp_path, zoo, capsys, {"model_state_dict": state})
    assert f"missing key '{key}'" in line and "mmgpt-lora.pt" in line, line

    state = _mmgpt_checkpoint(seed=1)
    wrong = f"{LM}1.gated_cross_attn_layer.ff.1.lora_A.weight"
    state[wrong] = torch.zeros(RANK, 63)
    line = _bad_import(tmp_path, zoo, capsys, {"model_state_dict": state})
    assert f"key '{wrong}'" in line and "shape [4, 63], expected [4, 64]" in line, line

    line = _bad_import(tmp_path, zoo, capsys, {"model_state_dict": _mmgpt_checkpoint(1), "config": Payload()})
    assert "cannot read" in line and "safely" in line, line

    state = _mmgpt_checkpoint(seed=1)
    state["module.lang_encoder.base_model.model.lm_head.weight"] = torch.zeros(2, 2)
    line = _bad_import(tmp_path, zoo, capsys, {"model_state_dict": state})
    assert "unexpected key 'module.lang_encoder.base_model.model.lm_head.weight'" in line, line

    line = _bad_import(tmp_path, zoo, capsys, {"model_state_dict": _mmgpt_checkpoint(1)}, options=[])
    assert "--option base=" in line, line


# -- against OpenFlamingo's own code + peft, as Multimodal-GPT builds its model ---------------------------

CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
# Multimodal-GPT's configs/lora_config.py targets (its r=16, alpha=16 scaled down with the model).
MMGPT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "to_q", "to_kv", "to_out", "ff.1", "ff.3"]


def test_openflamingo_with_mmgpt_lora_equals_openflamingo_plus_peft(open_flamingo, tmp_path):
    """A tiny OpenFlamingo (its create_model_and_transforms) with random gates, its trainable state saved;
    then, as Multimodal-GPT does, everything frozen, peft LoRA on its lang_encoder, the trainable (LoRA)
    tensors saved under DDP's `module.`. lamm's imports of both give OpenFlamingo+peft's logits."""
    import open_clip
    from peft import LoraConfig, get_peft_model

    from lamm.llm.tiny import tiny_causal_lm, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_causal_lm(len(tokenizer), hidden_size=64, num_layers=4).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG}))
    torch.manual_seed(1)
    clip_weights = open_clip.create_model(f"local-dir:{clip}").state_dict()
    save_file({k: v.contiguous() for k, v in clip_weights.items()}, str(clip / "open_clip_model.safetensors"))
    torch.manual_seed(2)
    model, _, of_tokenizer = open_flamingo.create_model_and_transforms(
        f"local-dir:{clip}", None, str(tmp_path / "llm"), str(tmp_path / "llm"), cross_attn_every_n_layers=2)
    with torch.no_grad():
        for block in model.lang_encoder.gated_cross_attn_layers:
            if block is not None:
                block.attn_gate.uniform_(0.3, 0.9)
                block.ff_gate.uniform_(-0.9, -0.3)
    # OpenFlamingo's checkpoint: its trainable tensors (perceiver, cross-attention, embeddings).
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    torch.save({k: v for k, v in model.state_dict().items() if k in trainable}, tmp_path / "checkpoint.pt")
    base = import_checkpoint("openflamingo", tmp_path / "checkpoint.pt", tmp_path / "of",
                             {"llm": str(tmp_path / "llm"), "vision": str(clip)})

    ids = of_tokenizer(PROMPT, return_tensors="pt").input_ids
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        without_lora = model.eval()(images[None, :, None], ids, attention_mask=torch.ones_like(ids)).logits
    model.requires_grad_(False)  # Multimodal-GPT: freeze everything, then LoRA on the language side
    model.lang_encoder = get_peft_model(model.lang_encoder, LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=MMGPT_TARGETS, lora_dropout=0.0, bias="none"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    params = dict(model.named_parameters())  # its get_checkpoint: no aliases, trainable only
    lora = {f"module.{k}": v for k, v in model.state_dict().items() if k in params and params[k].requires_grad}
    assert any(".gated_cross_attn_layer.ff.3.lora_B.default.weight" in k for k in lora) and len(lora) == 52
    torch.save({"model_state_dict": lora}, tmp_path / "mmgpt-lora.pt")
    out = import_checkpoint("mmgpt", tmp_path / "mmgpt-lora.pt", tmp_path / "mmgpt",
                            {"base": str(base), "alpha": str(ALPHA)})

    ours, _ = load_for_inference(out)
    assert ours.tokenizer(PROMPT, return_tensors="pt").input_ids.tolist() == ids.tolist()
    model.eval()
    batch = Batch(ids, torch.ones_like(ids), None, {"image": MediaBatch(images, torch.zeros(2, dtype=torch.long))})
    with torch.no_grad():
        theirs = model(images[None, :, None], ids, attention_mask=torch.ones_like(ids)).logits
        logits = ours(batch, logits="all").logits[..., :theirs.shape[-1]]
    assert torch.allclose(logits, theirs, atol=1e-4, rtol=0), (logits - theirs).abs().max()
    assert (without_lora - theirs).abs().max() > 1e-2  # the LoRA matters: OpenFlamingo without it is far off


def test_frozen_zero_gates_are_refused_in_one_line(zoo):
    _, err = zoo.refusal.communicate(timeout=600)
    lines = [ln for ln in err.splitlines() if ln.startswith("lamm-train: error:")]
    assert zoo.refusal.returncode == 2 and len(lines) == 1, err[-3000:]
    assert "model.policy.fusion=lora" in lines[0] and "init_from=" in lines[0] and "zero gradient" in lines[0]
    assert not list((zoo.root / "runs" / "null").glob("*/*/checkpoints"))


def test_multimodal_gpt_recipe_trains_from_the_import(zoo):
    """`lamm-train experiment=multimodal_gpt init_from=<mmgpt import> debug=fast` as a user runs it; the
    gradients are read in-process on the same composed config (the console script's own argv rewriting,
    init_from and gate check), on a batch with images of the recipe's own data pipeline."""
    from lamm.build import build_model
    from lamm.cli.train import data_config, with_imported_architecture
    from lamm.config import compose
    from lamm.policy import check_gradients_flow
    from lamm.training.datamodule import LammDataModule

    argv = _train_argv(zoo.root, str(zoo.mmgpt))
    cfg = compose("train", with_imported_architecture(argv))
    model = build_model(cfg.model)
    init_from_run(model, cfg.init_from)
    check_gradients_flow(model, model.policy)
    data = LammDataModule(data_config(cfg), model, max_steps=2)
    data.setup("fit")
    batch = next(b for b in data.train_dataloader() if "image" in b.media and len(b.media["image"]))
    model.train()(batch).loss.backward()
    trainable = model.trainable_parameters()
    assert {n.split(".")[0] for n in trainable} == {"llm", "fusion"} and all("lora_" in n for n in trainable)
    assert any(".to_kv.lora_A" in n for n in trainable) and any(".ff_out.lora_B" in n for n in trainable)
    silent = [n for n, p in trainable.items() if p.grad is None or not bool(p.grad.ne(0).any())]
    assert not silent, silent

    out, err = zoo.training.communicate(timeout=600)
    assert zoo.training.returncode == 0, err[-3000:]
    assert f"init_from {zoo.mmgpt}:" in " ".join(out.split())
    # export -> init_from reproduces the run's logits exactly (the fusion's LoRA is in lamm_weights)
    run = next((zoo.root / "runs").glob("*mmgpt/*/*/config.yaml")).parent
    trained, run_cfg = load_for_inference(run)
    expected = _logits(trained)
    assert (expected - _logits(load_for_inference(zoo.mmgpt)[0])).abs().max() > 0  # training moved it
    for source in (run / "export", run):
        again = build_model(run_cfg.model)
        init_from_run(again, source)
        assert torch.equal(_logits(again), expected), source
    from safetensors.torch import load_file

    kept = load_file(str(run / "export" / "lamm_weights.safetensors"))
    assert any(n.startswith("fusion.") and "lora_" in n for n in kept)
    assert not any(n.startswith("llm.") and "lora_" in n for n in kept)  # the LLM's LoRA is the peft adapter


def test_which_parameters_a_frozen_zero_gate_cuts_off():
    from lamm.build import build_model
    from lamm.policy import zero_gradient_parameters
    from lamm.testing import tiny_model_config

    cfg = tiny_model_config(fusion="gated_xattn", projector="perceiver", policy={"fusion": "lora"})
    cfg["lora"]["fusion_targets"] = ["to_q", "to_kv", "to_out", "ff_in", "ff_out"]
    model = build_model(cfg)
    everything = zero_gradient_parameters(model)  # all gates 0: the fusion's LoRA and the media path
    assert any(n.startswith("projectors.") for n in everything) and any(n.startswith("encoders.") for n in everything)
    with torch.no_grad():
        model.fusion.blocks["1"].attn_gate.fill_(0.5)
    dead = zero_gradient_parameters(model)
    assert not any(n.startswith(("projectors.", "encoders.")) for n in dead)  # media reach the text through block 1
    assert not any(n.startswith("fusion.blocks.1.to_") for n in dead)
    assert any(n.startswith("fusion.blocks.1.ff_in.lora_") for n in dead)  # its feed-forward gate is still shut
    assert any(n.startswith("fusion.blocks.3.to_kv.lora_") for n in dead)
    model.fusion.blocks["3"].ff_gate.requires_grad_(True)  # a trainable gate opens in training
    assert not any(n.startswith("fusion.blocks.3.ff_") for n in zero_gradient_parameters(model))


def test_lamm_eval_and_lamm_chat_on_the_mmgpt_import(zoo, tmp_path, monkeypatch, capsys) -> None:
    """`lamm-eval checkpoint=OUT` and `lamm-chat OUT` (the import sets Multimodal-GPT's template), in this
    process (their console scripts are tested elsewhere)."""
    import io

    from lamm.cli.chat import main as chat_main
    from lamm.testing import evaluate_run_in_process

    synth = evaluate_run_in_process(zoo.mmgpt, tmp_path, "mmgpt")
    image = synth / "shapes" / "images" / "test" / "000000.png"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {image}\nWhat shape is this?\n/quit\n"))
    assert chat_main([str(zoo.mmgpt), "--max-new-tokens", "4", "--stats"]) == 0
    said = capsys.readouterr()
    assert "template mmgpt" in said.out + said.err, (said.out + said.err)[-2000:]
