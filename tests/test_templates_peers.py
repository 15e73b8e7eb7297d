"""Peer prompt formats byte for byte: Multimodal-GPT's instruction template (`mmgpt`), OpenFlamingo's
few-shot prompts (`openflamingo_caption`, `openflamingo_vqa`) and LAMM's layout (`lamm`), through the data
processor and the benchmark renderer. The expected strings are the peers' own template text (Multimodal-GPT's
mmgpt/datasets/{dolly,vqa,dial}_dataset.py and app.py; OpenFlamingo's open_flamingo/eval get_*_prompt;
LAMM's src/model/LAMM/openlamm.py make_prompt_start, build_one_instance, prepare_generation_embedding)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lamm.batch import IGNORE_INDEX
from lamm.benchmarks.base import Example, Query
from lamm.benchmarks.render import Renderer
from lamm.datasets.processor import Processor
from lamm.datasets.sample import MediaRef, Sample, Turn
from lamm.datasets.templates import get_template
from lamm.datasets.testing import dummy_media_specs, write_image
from lamm.registry import FUSIONS
from lamm.tokens import END_OF_CHUNK

# Multimodal-GPT's template text.
MMGPT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
MMGPT_QA = MMGPT + "\n\n### Image:\n{image}\n\n### Instruction:\n{question}\n\n### Response:\n"
MMGPT_CHOICE = (MMGPT + "\n\n### Image:\n{image}\n\n### Instruction:\n{question}\n\n### Input:\n{options}"
                "\n\n### Response:\n")
MMGPT_NO_INPUT = MMGPT + "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
MMGPT_WITH_INPUT = MMGPT + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
MMGPT_DIAL = "\n\n### Instruction:\n{question}\n\n### Response:\n"
MMGPT_END = "### End."
# LAMM's strings: the prompt start (sep, roles[0], the vision start tag), the first human turn after the
# image, an answer, a later human turn, and the generation prompt after the image.
LAMM_START = "### Human: <Img>"
LAMM_FIRST = "</Img> {question}\n### Assistant: "
LAMM_ANSWER = "{answer}\n###"
LAMM_LATER = "Human: {question}\n### Assistant: "
LAMM_GENERATE = "</Img> {question}\n### Assistant:"
# OpenFlamingo's evaluation prompts.
OF_CAPTION = "<image>Output:{caption}<|endofchunk|>"
OF_VQA = "<image>Question:{question} Short answer:{answer}<|endofchunk|>"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[MediaRef]:
    folder = tmp_path_factory.mktemp("peer_media")
    refs = []
    for i, colour in enumerate(((255, 0, 0), (0, 0, 255), (0, 255, 0))):
        write_image(folder / f"{i}.png", colour)
        refs.append(MediaRef("image", str(folder / f"{i}.png"), "image"))
    return refs


def _rendered(sample: Sample, tok, template: str) -> tuple[str, str]:
    """(whole text, trained text) of the template's segments."""
    segs = get_template(template).render(sample, tok)
    return "".join(s.text for s in segs), "".join(s.text for s in segs if s.train)


def _turns(*texts: str, input: str | None = None) -> list[Turn]:
    turns = [Turn("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)]
    if input is not None:
        turns[0] = Turn("user", texts[0], input=input)
    return turns


def test_mmgpt_template_is_multimodal_gpts_text(tok, images):
    eos = tok.eos_token
    vqa = Sample("v", _turns("<image>\nWhat colour is it?", "red"), images[:1])
    text, trained = _rendered(vqa, tok, "mmgpt")
    assert text == MMGPT_QA.format(image="<image>", question="What colour is it?") + "red" + MMGPT_END + eos
    assert trained == "red" + MMGPT_END + eos  # its labels: the answer, its end marker and EOS
    choice = Sample("c", _turns("<image>\nWhat colour is it?", "red", input="red, blue"), images[:1])
    assert _rendered(choice, tok, "mmgpt")[0].startswith(
        MMGPT_CHOICE.format(image="<image>", question="What colour is it?", options="red, blue"))
    text, _ = _rendered(Sample("l", _turns("Name a colour.", "Red."), []), tok, "mmgpt")
    assert text == MMGPT_NO_INPUT.format(instruction="Name a colour.") + "Red." + MMGPT_END + eos
    text, _ = _rendered(Sample("i", _turns("Translate.", "hello", input="bonjour"), []), tok, "mmgpt")
    assert text == MMGPT_WITH_INPUT.format(instruction="Translate.", input="bonjour") + "hello" + MMGPT_END + eos
    dialogue = Sample("d", _turns("<image>\nWhat shape?", "square", "And the colour?", "red"), images[:1])
    text, trained = _rendered(dialogue, tok, "mmgpt")
    first = MMGPT + "\n\n### Image:\n<image>" + MMGPT_DIAL.format(question="What shape?")
    second = MMGPT_DIAL.format(question="And the colour?")
    assert text == first + "square" + MMGPT_END + eos + second + "red" + MMGPT_END + eos
    assert trained == "square" + MMGPT_END + eos + "red" + MMGPT_END + eos
    # Its chat demo's prompt for a question about an image (PromptGenerator with one image turn).
    ask = Sample("a", _turns("<image>\nWhat is in this image?"), images[:1])
    assert _rendered(ask, tok, "mmgpt")[0] == MMGPT_QA.format(image="<image>", question="What is in this image?")
    assert get_template("mmgpt").reply("a red square### End.") == "a red square"


def test_lamm_template_is_lamms_text(tok, images):
    """LAMM's layout: `<Img>`/`</Img>` around the image, `\n###` ending each trained answer (no EOS)."""
    from lamm.llm.tiny import tiny_tokenizer

    dialogue = Sample("d", _turns("<image>\nWhat shape?", "square", "And the colour?", "red"), images[:1])
    text, trained = _rendered(dialogue, tok, "lamm")
    assert text == (LAMM_START + "<image>" + LAMM_FIRST.format(question="What shape?") +
                    LAMM_ANSWER.format(answer="square") + LAMM_LATER.format(question="And the colour?") +
                    LAMM_ANSWER.format(answer="red"))
    assert trained == "square\n###red\n###"
    ask = Sample("a", _turns("What colour is it?\n<image>"), images[:1])
    assert _rendered(ask, tok, "lamm")[0] == LAMM_START + "<image>" + LAMM_GENERATE.format(question="What colour is it?")
    system = get_template("lamm", system_prompt="Look closely.").render(ask, tok)
    assert "".join(s.text for s in system).startswith("Look closely.\n\n" + LAMM_START)  # as LAMM's use_system
    assert get_template("lamm").reply("a red square\n### Human: and") == "a red square"
    specs = dummy_media_specs({"image": 1})
    out = Processor(tok, get_template("lamm"), specs, FUSIONS.get("prefix").layout, max_length=None,
                    training=True).tokenize(dialogue)
    trained_ids = [i for i, label in zip(out.input_ids, out.labels) if label != IGNORE_INDEX]
    assert _decode(tok, trained_ids) == "square\n###red\n###" and tok.eos_token_id not in trained_ids
    hashes = tiny_tokenizer()
    hashes.add_tokens(["###"])  # LLaMA's vocabulary has `###` as one token: generation stops there
    assert hashes.convert_tokens_to_ids("###") in Renderer.stop_ids(hashes, stop_strings=("###",))


def _decode(tok, ids) -> str:
    return tok.decode([int(i) for i in ids])


@pytest.mark.parametrize("fusion", ["gated_xattn", "prefix"])
def test_openflamingo_few_shot_strings_through_the_processor(tok, images, fusion):
    specs = dummy_media_specs({"image": 1})
    captions = ["A red square.", "A blue square."]
    sample = Sample("few", _turns("<image>", captions[0], "<image>", captions[1], "<image>"), images)
    for training in (False, True):
        proc = Processor(tok, get_template("openflamingo_caption"), specs, FUSIONS.get(fusion).layout,
                         max_length=None, training=training)
        out = proc.tokenize(sample if not training else Sample("few", [*sample.turns, Turn("assistant", "A green")],
                                                               images))
        expected = "".join(OF_CAPTION.format(caption=c) for c in captions) + "<image>Output:"
        if training:
            expected += "A green" + END_OF_CHUNK
            trained = [i for i, label in zip(out.input_ids, out.labels) if label != IGNORE_INDEX]
            assert _decode(tok, trained) == "".join(f"{c}{END_OF_CHUNK}" for c in captions) + "A green" + END_OF_CHUNK
        assert _decode(tok, out.input_ids) == expected  # exactly OpenFlamingo's string, whatever the fusion
    assert get_template("openflamingo_caption").reply("A red circle.Output:A") == "A red circle."


def test_openflamingo_vqa_few_shot_in_the_benchmark_renderer(images):
    from lamm.build import build_model
    from lamm.testing import tiny_model_config

    model = build_model(tiny_model_config(fusion="gated_xattn")).eval()
    renderer = Renderer(model, template="openflamingo_vqa")
    query = Query(["What colour is it?"], images[2:], examples=[Example("What colour is it?", "red", images[:1]),
                                                               Example("What colour is it?", "blue", images[1:2])])
    batch, prompts = renderer.generation_batch([("q", query, [], None)])
    expected = (OF_VQA.format(question="What colour is it?", answer="red")
                + OF_VQA.format(question="What colour is it?", answer="blue")
                + "<image>Question:What colour is it? Short answer:")
    ids = batch.input_ids[0][batch.attention_mask[0].bool()]
    assert _decode(model.tokenizer, ids) == expected and prompts[0] == expected
    assert len(batch.media["image"]) == 3
    assert model.tokenizer.convert_tokens_to_ids(END_OF_CHUNK) in renderer.eos_ids  # answers end there
    assert get_template("openflamingo_vqa").reply("blue, I think Question:") == "blue"
    with torch.no_grad():  # and the model runs on it
        assert model.generate(batch, max_new_tokens=2, eos_token_id=renderer.eos_ids).shape[0] == 1
