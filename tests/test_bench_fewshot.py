"""Few-shot evaluation: prompts exactly as OpenFlamingo's evaluation writes them, RICES (true nearest
neighbours, features cached once), classification by ranking, shots x seeds with mean and std, and
`lamm-eval benchmark=flamingo_suite` through the console script."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lamm.benchmarks.base import EvalSample, Scenario
from lamm.benchmarks.fewshot import FewShot
from lamm.benchmarks.fewshot_runs import run_fewshot
from lamm.benchmarks.inferencers import option_loglik
from lamm.benchmarks.render import Renderer
from lamm.benchmarks.rices import ImageFeaturizer, cache_path, cached_features, nearest
from lamm.build import build_model
from lamm.datasets.sample import MediaRef
from lamm.datasets.synth import generate
from lamm.testing import tiny_model_config

BIN = Path(sys.executable).parent


class Listed(Scenario):
    """Evaluated samples and a support (train) split given as lists."""

    name = "listed"
    split = "test"

    def __init__(self, evaluated: list[EvalSample], train: list[EvalSample]) -> None:
        self.evaluated, self.train = evaluated, train

    def samples(self) -> list[EvalSample]:
        return self.evaluated

    def support(self) -> list[EvalSample]:
        return self.train


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[MediaRef]:
    """Twelve one-colour images; the colour is the feature the constructed encoder sees."""
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    refs = []
    for i in range(12):
        path = root / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), rng.integers(0, 256, 3), dtype=np.uint8)).save(path)
        refs.append(MediaRef("image", str(path), "image"))
    return refs


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(tiny_model_config()).eval()


VQA = [("s0", "What colour is the cat?", ["black", "dark"]), ("s1", "How many dogs?", ["2"]),
       ("s2", "Is the door open?", ["yes"]), ("s3", "What is on the table?", ["a red apple"])]
# OpenFlamingo's evaluation text per demonstration (open_flamingo/eval/evaluate.py joins
# `get_vqa_prompt(question, answers[0]) + "\n"`; models/open_flamingo.py writes the prompt).
OF_VQA = {"s0": "<image>Question:What colour is the cat? Short answer:black<|endofchunk|>\n",
          "s1": "<image>Question:How many dogs? Short answer:2<|endofchunk|>\n",
          "s2": "<image>Question:Is the door open? Short answer:yes<|endofchunk|>\n",
          "s3": "<image>Question:What is on the table? Short answer:a red apple<|endofchunk|>\n"}
OF_VQA_QUERY = "<image>Question:Is it raining? Short answer:"
IDEFICS_VQA = {"s0": "<image>Question:What colour is the cat? Answer: black<|endofchunk|>\n",
               "s1": "<image>Question:How many dogs? Answer: 2<|endofchunk|>\n",
               "s2": "<image>Question:Is the door open? Answer: yes<|endofchunk|>\n",
               "s3": "<image>Question:What is on the table? Answer: a red apple<|endofchunk|>\n"}
CAPTIONS = [("c0", [" A black cat on a sofa. ", "a cat"]), ("c1", ["Two dogs in the snow."]),
            ("c2", ["An open door."]), ("c3", ["A red apple on a table."])]
OF_CAPTION = {"c0": "<image>Output:A black cat on a sofa.<|endofchunk|>\n",
              "c1": "<image>Output:Two dogs in the snow.<|endofchunk|>\n",
              "c2": "<image>Output:An open door.<|endofchunk|>\n",
              "c3": "<image>Output:A red apple on a table.<|endofchunk|>\n"}
MEMES = [("m0", "love you all", "no"), ("m1", "go away", "yes"), ("m2", "nice day", "no"), ("m3", "you people", "yes")]
OF_MEMES = {"m0": "<image>is an image with: 'love you all' written on it. Is it hateful? Answer:no<|endofchunk|>",
            "m1": "<image>is an image with: 'go away' written on it. Is it hateful? Answer:yes<|endofchunk|>",
            "m2": "<image>is an image with: 'nice day' written on it. Is it hateful? Answer:no<|endofchunk|>",
            "m3": "<image>is an image with: 'you people' written on it. Is it hateful? Answer:yes<|endofchunk|>"}
OF_MEME_QUERY = "<image>is an image with: 'hello' written on it. Is it hateful? Answer:"


def _rendered(model, inst: FewShot, sample: EvalSample) -> tuple[str, int, list]:
    """The prompt text the model is given, its number of images, and the query (through the evaluator's renderer)."""
    q = inst.query(sample)
    batch, prompts = Renderer(model, template=inst.template).generation_batch([(sample.id, q, [], None)])
    return prompts[0], len(batch.media["image"]) if "image" in batch.media else 0, q.extra["examples"]


def test_prompts_render_exactly_as_openflamingo_eval_writes_them(tiny, images) -> None:
    vqa_train = [EvalSample(i, q, [], a, [images[n]], "vqa") for n, (i, q, a) in enumerate(VQA)]
    query = EvalSample("q0", "Is it raining?", [], ["no"], [images[11]], "vqa")
    scen = Listed([query], vqa_train)
    for shots in (0, 4):
        inst = FewShot(shots=shots, prompt="vqa", format="openflamingo", seed=3)
        inst.prepare(scen, tiny)
        text, n_images, ids = _rendered(tiny, inst, query)
        if shots == 4:
            assert sorted(ids) == ["s0", "s1", "s2", "s3"] and n_images == 5
            assert text == "".join(OF_VQA[i] for i in ids) + OF_VQA_QUERY
        else:  # OpenFlamingo's zero-shot: two demonstrations, text only, and the query's image alone
            assert len(ids) == 2 and n_images == 1
            assert text == "".join(OF_VQA[i].replace("<image>", "") for i in ids) + OF_VQA_QUERY
    inst = FewShot(shots=4, prompt="vqa", format="idefics")
    inst.prepare(scen, tiny)
    text, _, ids = _rendered(tiny, inst, query)
    assert text == "".join(IDEFICS_VQA[i] for i in ids) + "<image>Question:Is it raining? Answer: "

    cap_train = [EvalSample(i, "Describe the image in one sentence.", [], a, [images[4 + n]], "caption")
                 for n, (i, a) in enumerate(CAPTIONS)]
    cap_query = EvalSample("q1", "Describe the image in one sentence.", [], ["x"], [images[10]], "caption")
    for shots in (0, 4):
        inst = FewShot(shots=shots, prompt="caption", format="openflamingo")
        inst.prepare(Listed([cap_query], cap_train), tiny)
        text, n_images, ids = _rendered(tiny, inst, cap_query)
        demos = "".join(OF_CAPTION[i] if shots else OF_CAPTION[i].replace("<image>", "") for i in ids)
        assert text == demos + "<image>Output:" and n_images == (5 if shots else 1)
    assert inst.template.reply('a dog "running" Output: more') == "a dog running"  # OpenFlamingo's post-processing

    meme_train = [EvalSample(i, f"The meme's text reads \"{t}\".", ["yes", "no"], a, [images[n]], "hateful_memes",
                             {"text": t}) for n, (i, t, a) in enumerate(MEMES)]
    meme = EvalSample("q2", "x", ["yes", "no"], "no", [images[9]], "hateful_memes", {"text": "hello"})
    for shots in (0, 4):
        inst = FewShot(shots=shots, prompt="hateful_memes", format="openflamingo")
        inst.prepare(Listed([meme], meme_train), tiny)
        text, _, ids = _rendered(tiny, inst, meme)
        demos = "".join(OF_MEMES[i] if shots else OF_MEMES[i].replace("<image>", "") for i in ids)
        assert text == demos + OF_MEME_QUERY  # classification demonstrations are joined without newlines
        # Ranking scores each class after the prompt, closed with <|endofchunk|> (labels only on those tokens).
        _, _, conts = Renderer(tiny, template=inst.template).prompt_and_candidates(
            [(meme.id, inst.query(meme), [], None, ["yes", "no"])])
        tok = tiny.tokenizer
        assert list(conts[0][0].ids) == tok("yes", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|endofchunk|>")]

    short = Renderer(tiny, template=inst.template)
    short.context = 30  # a 4-shot prompt past the model's context is an error, not a silently garbled score
    with pytest.raises(ValueError, match=r"sample 'q2': the prompt is \d+ tokens, more than the model's context of 30"):
        short.generation_batch([(meme.id, inst.query(meme), [], None)])

    chat = FewShot(shots=2, prompt="vqa", format="chat")
    chat.prepare(scen, tiny)
    q = chat.query(query)
    assert chat.template is None and q.turns == ["Is it raining?"] and len(q.examples) == 2
    prompt = Renderer(tiny, template="chat").generation_batch([(query.id, q, [], None)])[1][0]
    answers = {dict((i, a[0]) for i, _, a in VQA)[i] for i in q.extra["examples"]}
    assert prompt.count("<|im_start|>user") == 3 and all(f"{a}<|im_end|>" in prompt for a in answers)  # earlier turns
    with pytest.raises(ValueError, match="format must be one of openflamingo, idefics, chat"):
        FewShot(format="flamingo")
    with pytest.raises(ValueError, match="no train split"):
        FewShot(shots=2).prepare(Listed([query], []), tiny)


def test_rices_true_neighbours_and_features_cached_once(tiny, images, tmp_path) -> None:
    calls = []

    def encode(x: torch.Tensor) -> torch.Tensor:  # constructed features: an image's colour is its feature
        calls.append(len(x))
        return x.unsqueeze(1)

    def colour(img) -> torch.Tensor:
        return torch.tensor(np.asarray(img, dtype=np.float32).reshape(-1, 3).mean(0)) - 127.5

    feat = ImageFeaturizer(encode, colour, {"encoder": "colour"}, batch_size=4)
    support = [EvalSample(f"t{i}", "q", [], ["a"], [images[i]]) for i in range(9)]
    first = cached_features(feat, support, tmp_path, "listed", "train")
    assert sum(calls) == 9 and cache_path(tmp_path, "listed", "train", support, feat.identity).is_file()
    again = cached_features(feat, support, tmp_path, "listed", "train")
    assert sum(calls) == 9 and torch.equal(first, again)  # read from disk: no encoder call
    colours = torch.stack([colour(Image.open(r.path)) for r in images[:9]])
    colours = colours / colours.norm(dim=-1, keepdim=True)
    assert torch.allclose(first, colours, atol=1e-6)
    for qi in (9, 10, 11):
        q = colour(Image.open(images[qi].path))
        truth = sorted(range(9), key=lambda j: -float(colours[j] @ q))[:3]
        assert nearest(q / q.norm(), first, 3) == truth[::-1]  # most similar last, next to the query
    assert nearest(first[2], first, 2, exclude=[2])[-1] != 2

    # Through the instruction with the model's own encoder: cached on the first prepare, reused after.
    counted = []
    original = tiny.media_features
    tiny.media_features = lambda modality, x: counted.append(len(x)) or original(modality, x)
    try:
        evaluated = [EvalSample(f"e{i}", "q", [], ["a"], [images[i]]) for i in (9, 10, 11)]
        rices = {"encoder": "model", "cache_dir": str(tmp_path / "model")}
        first_run = FewShot(shots=3, prompt="vqa", retrieval="rices", rices=rices)
        first_run.prepare(Listed(evaluated, support), tiny)
        assert sum(counted) == 9 + 3 and len(list((tmp_path / "model").glob("*.safetensors"))) == 2
        second = FewShot(shots=3, prompt="vqa", retrieval="rices", rices=rices, seed=7)
        second.prepare(Listed(evaluated, support), tiny)
        assert sum(counted) == 12  # no encoder call the second time
        model_feats = ImageFeaturizer.of_model(tiny)(support + evaluated)
    finally:
        del tiny.media_features
    for i, s in enumerate(evaluated):
        truth = torch.argsort(model_feats[:9] @ model_feats[9 + i], descending=True, stable=True)[:3].tolist()
        assert [d.id for d in second.select(s)] == [f"t{j}" for j in truth[::-1]]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=0, sizes={"train": 24, "test": 6}, kinds=("shapes",), image_size=32)
    return root


def test_shots_and_seeds_mean_std_and_ranking(synth, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(fusion="gated_xattn")).eval()
    scenario = {"name": "synth_shapes", "root": str(synth), "tasks": ["colour"], "limit": 4}
    cfg = {"scenario": scenario, "prompt": "classification", "shots": [0, 2], "seeds": [0, 1],
           "inferencer": {"name": "ppl", "length_norm": True}, "metrics": ["accuracy", "ece"]}
    out = run_fewshot(model, "fewshot_colour", cfg, tmp_path / "random", model_name="tiny", batch_size=2)
    written = json.loads((tmp_path / "random" / "results.json").read_text())
    assert written["results"].keys() == {"0", "2"} and written == json.loads(json.dumps(out))
    for k in ("0", "2"):
        per_seed = [json.loads((tmp_path / "random" / f"{k}shot" / f"seed{s}" / "results.json").read_text())
                    for s in (0, 1)]
        for m in ("accuracy", "ece"):
            values = [r["metrics"][m] for r in per_seed]
            cell = written["results"][k]["metrics"][m]
            assert cell["values"] == values
            assert cell["mean"] == pytest.approx(np.mean(values)) and cell["std"] == pytest.approx(np.std(values))
    rec = json.loads((tmp_path / "random" / "2shot" / "seed1" / "samples.jsonl").read_text().splitlines()[0])
    assert rec["prompt"].count("<image>Output:") == 3 and len(rec["extra"]["examples"]) == 2
    assert "| accuracy |" in (tmp_path / "random" / "fewshot.md").read_text()

    rices = {**cfg, "retrieval": "rices", "shots": [2], "rices": {"cache_dir": str(tmp_path / "feats")}}
    out = run_fewshot(model, "fewshot_colour", rices, tmp_path / "rices", model_name="tiny", batch_size=2)
    assert out["results"]["2"]["seeds"] == [0]  # RICES demonstrations do not depend on the seed: one run

    # Ranking in slices of max_rows candidates scores exactly what one pass does (ImageNet's 1000 classes).
    from lamm.benchmarks.build import build_scenario

    inst = FewShot(shots=2, prompt="classification")
    scen = build_scenario(scenario)
    inst.prepare(scen, model)
    items = [(s.id, inst.query(s), [], None, s.options) for s in scen.samples()]
    renderer = Renderer(model, template=inst.template)
    whole, _ = option_loglik(model, renderer, items, max_rows=64, length_norm=True)
    sliced, _ = option_loglik(model, renderer, items, max_rows=2, length_norm=True)
    assert len(whole[0]) == len(scen.samples()[0].options) > 2
    assert np.allclose(whole, sliced, atol=1e-5)


SUITE = ["fewshot_coco", "fewshot_vqav2", "fewshot_okvqa", "fewshot_textvqa", "fewshot_vizwiz", "fewshot_imagenet",
         "fewshot_hateful_memes", "mme", "mmmu_val"]


def _tiny_run(root: Path) -> Path:
    """A run folder in the training layout: an OpenFlamingo-shaped tiny model (perceiver + gated cross-attention)."""
    from lamm.training.checkpoint_io import write_checkpoint
    from lamm.training.run_folder import CONFIG_FILE

    torch.manual_seed(0)
    cfg = tiny_model_config(projector="perceiver", fusion="gated_xattn")
    trained = build_model(cfg)
    with torch.no_grad():  # open the gates, or the images would not reach the LLM
        for p in trained.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    run = root / "runs" / "tiny" / "20260101-000000"
    run.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": cfg}), run / CONFIG_FILE)
    write_checkpoint({"state_dict": {f"model.{k}": v for k, v in trained.trained_tensors().items()}},
                     run / "checkpoints" / "last.ckpt")
    return run


def test_flamingo_suite_one_command(tmp_path) -> None:
    """`lamm-eval benchmark=flamingo_suite data_root=<fixtures> checkpoint=<run>`: every benchmark, one table."""
    from lamm.benchmarks.testing import write_official_fixtures

    data = tmp_path / "data"
    write_official_fixtures(data)
    run = _tiny_run(tmp_path)
    exe = str(BIN / "lamm-eval")
    args = [f"data_root={data}", f"checkpoint={run}", f"output_dir={tmp_path / 'out'}", "batch_size=4", "threads=1"]
    bad = subprocess.run([exe, "benchmark=flamingo_suite", *args, "benchmark.suite.members=[fewshot_cocoo]"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "lamm-eval: error: benchmark.suite.members: ['fewshot_cocoo'] not among the suite's recipes"), bad.stderr[-2000:]
    # Small: 2 samples, shots [0, 2], one seed (seeds are tested above), CIDEr without the Java tokenizer.
    proc = subprocess.run([exe, "benchmark=flamingo_suite", *args, "benchmark.suite.shots=[0,2]",
                           "benchmark.suite.seeds=[0]", "benchmark.suite.limit=2",
                           "benchmark.recipes.fewshot_coco.fewshot.metrics=[{name:cider,tokenizer:simple}]"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "tiny-20260101-000000" / "flamingo_suite"
    table = json.loads((out / "suite.json").read_text())
    assert table["shots"] == [0, 2] and [r["benchmark"] for r in table["rows"]] == SUITE
    rows = {r["benchmark"]: r for r in table["rows"]}
    for name in SUITE:
        assert set(rows[name]["shots"]) == ({"0"} if name in ("mme", "mmmu_val") else {"0", "2"}), name
    assert rows["fewshot_coco"]["metric"] == "cider" and rows["fewshot_hateful_memes"]["metric"] == "roc_auc"
    assert rows["mme"]["metric"] == "mme_perception"
    vqa = json.loads((out / "fewshot_vqav2" / "results.json").read_text())
    assert vqa["results"]["2"]["seeds"] == [0] and vqa["shots"] == [0, 2]
    rec = json.loads((out / "fewshot_vqav2" / "2shot" / "seed0" / "samples.jsonl").read_text().splitlines()[0])
    assert rec["prompt"].count("Short answer:") == 3 and rec["prompt"].count("<image>") == 3
    md = (out / "suite.md").read_text().splitlines()
    assert "| benchmark | metric | n | 0-shot | 2-shot |" in md
    assert sum(line.startswith("| fewshot_") or line.startswith("| mm") for line in md) == len(SUITE)
