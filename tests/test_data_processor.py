"""Processor and collator: placeholder blocks, label masks, templates, truncation, padding, mixed batches."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lamm.datasets import build_collator
from lamm.datasets.errors import SampleSkipped
from lamm.batch import IGNORE_INDEX
from lamm.datasets.processor import Processor
from lamm.datasets.sample import MediaRef, Sample, Turn
from lamm.datasets.templates import TemplateError, get_template
from lamm.datasets.testing import dummy_media_specs, write_image, write_points, write_video
from lamm.llm.tiny import tiny_tokenizer
from lamm.registry import FUSIONS
from lamm.tokens import END_OF_CHUNK, PLACEHOLDERS, add_media_tokens

K = {"image": 5, "video": 2, "pointcloud": 3}
SPECS = dummy_media_specs(K)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pmedia")
    write_image(d / "a.png", (255, 0, 0))
    write_image(d / "b.png", (0, 255, 0))
    write_video(d / "v.mp4", num_frames=5)
    write_points(d / "p.npy")
    return d


def proc(tok, template: str = "vicuna_lamm", fusion: str = "prefix", **kw) -> Processor:
    system = kw.pop("system_prompt", "none")
    return Processor(tok, get_template(template, system_prompt=system), SPECS, layout=FUSIONS.get(fusion).layout, **kw)


def chat(media: list[MediaRef], *texts: str, sid: str = "s") -> Sample:
    roles = ["user", "assistant"]
    return Sample(sid, [Turn(roles[i % 2], t) for i, t in enumerate(texts)], media)  # type: ignore[arg-type]


def img(media: Path, name: str = "a.png") -> MediaRef:
    return MediaRef("image", str(media / name), "image")


def test_prefix_blocks_and_labels(tok, media):
    s = chat([img(media), img(media, "b.png")], "<image> and <image>: same colour?", "no", "Sure?", "yes")
    out = proc(tok)(s)
    pid = tok.convert_tokens_to_ids("<image>")
    ids, labels = out.input_ids, out.labels
    assert int((ids == pid).sum()) == 2 * K["image"]
    # each medium is one contiguous block of exactly K placeholders
    runs = torch.unique_consecutive(ids, return_counts=True)
    assert [int(c) for v, c in zip(*runs) if v == pid] == [K["image"], K["image"]]
    assert tok.decode(ids[labels != IGNORE_INDEX]) == "no<|im_end|>yes<|im_end|>"
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    # everything before the first response is prompt: no loss there
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert tok.decode(ids[:first]).endswith("### Assistant: ")
    assert len(out.media["image"]) == 2 and out.media["image"][1][1].mean() > 0.9  # green second


def test_gated_xattn_one_placeholder_and_end_of_chunk(tok, media):
    s = chat([img(media), img(media, "b.png")], "<image> What is it?", "a square", "<image> And this?", "a disc")
    out = proc(tok, fusion="gated_xattn")(s)
    text = tok.decode(out.input_ids)
    assert text.count("<image>") == 2
    # the chunk after each medium is closed: before the next medium and at the end
    assert text.count(END_OF_CHUNK) == 2
    assert f"{END_OF_CHUNK}<image> And this?" in text and text.endswith(END_OF_CHUNK)
    assert tok.decode(out.input_ids[out.labels != IGNORE_INDEX]) == "a square<|im_end|>a disc<|im_end|>"
    # generation: the last chunk stays open
    gen = proc(tok, fusion="gated_xattn", training=False)(chat([img(media)], "<image> What is it?"))
    assert tok.decode(gen.input_ids).endswith("### Assistant: ") and (gen.labels == IGNORE_INDEX).all()


def test_chat_template_labels(tok, media):
    s = chat([img(media)], "<image>Colour?", "red", "Sure?", "yes")
    out = proc(tok, "chat")(s)
    text = tok.decode(out.input_ids)
    assert text.startswith("<|im_start|>user\n" + "<image>" * K["image"] + "Colour?<|im_end|>\n<|im_start|>assistant\n")
    # the assistant's content and its end-of-turn token carry the loss; the generation prompt does not
    assert tok.decode(out.input_ids[out.labels != IGNORE_INDEX]) == "red<|im_end|>\nyes<|im_end|>\n"
    gen = proc(tok, "chat", training=False)(chat([img(media)], "<image>Colour?"))
    assert tok.decode(gen.input_ids).endswith("<|im_start|>assistant\n")
    with_system = proc(tok, "chat", system_prompt="task")(s)
    assert tok.decode(with_system.input_ids).startswith("<|im_start|>system\nYou are an AI visual assistant")


def test_templates_registry_and_kinds(tok):
    with pytest.raises(TemplateError, match="Did you mean 'mmgpt'"):
        get_template("mmpgt")
    doc = Sample("d", [Turn("document", "text")], kind="document")
    with pytest.raises(TemplateError, match="use template 'document'"):
        proc(tok, "vicuna_lamm")(doc)


def _check_blocks(tok, out) -> None:
    """Every surviving medium has a whole placeholder block, and nothing else survived."""
    for modality, ph in PLACEHOLDERS.items():
        pid = tok.convert_tokens_to_ids(ph)
        values, counts = torch.unique_consecutive(out.input_ids, return_counts=True)
        runs = [int(c) for v, c in zip(values, counts) if v == pid]
        assert all(r % K[modality] == 0 for r in runs)
        assert sum(runs) // K[modality] == len(out.media.get(modality, []))


def test_truncation_never_cuts_a_block(tok, media):
    s = chat([img(media), img(media, "b.png")], "Look <image> then <image> carefully please", "a long answer " * 5)
    full = proc(tok, max_length=None)(s)
    n = len(full.input_ids)
    kept_media, truncated = set(), 0
    for max_length in range(4, n + 2):
        p = proc(tok, max_length=max_length)
        try:
            out = p(s)
        except SampleSkipped as skip:  # nothing of the response left: dropped, counted by the dataset
            assert skip.reason == "too_long"
            continue
        assert len(out.input_ids) <= max_length
        assert torch.equal(out.input_ids, full.input_ids[: len(out.input_ids)])
        _check_blocks(tok, out)
        kept_media.add(len(out.media.get("image", [])))
        truncated += out.truncated
    assert kept_media == {2}  # responses come after both media here
    assert truncated > 0


def test_truncation_drops_cut_media_and_counts(tok, media):
    from lamm.datasets.base import ErrorPolicy, SampleDataset
    from lamm.datasets.errors import SkipCounter

    # the document is trained everywhere, so cutting through media keeps earlier text
    doc = Sample("d", [Turn("document", "Intro text. <image>Middle text. <image>End.")],
                 [img(media), img(media, "b.png")], kind="document")
    full = proc(tok, "document", max_length=None)(doc)
    pid = tok.convert_tokens_to_ids("<image>")
    second = int((full.input_ids == pid).nonzero()[K["image"]])  # first token of the second block
    for cut in range(second + 1, second + K["image"]):
        out = proc(tok, "document", max_length=cut)(doc)
        assert len(out.input_ids) == second and len(out.media["image"]) == 1
        _check_blocks(tok, out)
    counter = SkipCounter()
    ds = SampleDataset([doc, doc], proc(tok, "document", max_length=second + 2), ErrorPolicy("raise", counter))
    assert all(ds[i] is not None for i in range(2)) and counter.truncated == 2
    skip = SampleDataset([doc], proc(tok, "document", max_length=second + 2, truncation="skip"),
                         ErrorPolicy("raise", counter))
    assert skip[0] is None and counter.counts() == {"too_long": 1}
    assert counter.summary() == "skipped 1 samples (too_long=1); truncated 2 samples"


def test_mixed_batch_collation(tok, media):
    p = proc(tok)
    samples = [
        chat([img(media), MediaRef("pointcloud", str(media / "p.npy"), "pcl")], "<image> <pointcloud> match?", "yes",
             sid="img+pcl"),
        chat([], "Hello", "Hi there", sid="text"),
        chat([MediaRef("video", str(media / "v.mp4"), "video"), img(media, "b.png")], "<video><image> same?", "no",
             sid="vid+img"),
        chat([MediaRef("pointcloud", str(media / "p.npy"), "pcl")], "Shape?", "sphere", sid="pcl"),
    ]
    items = [p(s) for s in samples]
    batch = build_collator(tok)(items[:2] + [None] + items[2:])  # a skipped sample is dropped
    assert batch.ids == ["img+pcl", "text", "vid+img", "pcl"]
    assert batch.media["image"].sample_index.tolist() == [0, 2]
    assert batch.media["video"].sample_index.tolist() == [2]
    assert batch.media["pointcloud"].sample_index.tolist() == [0, 3]
    assert batch.media["image"].data.shape == (2, 3, 32, 32)
    assert batch.media["video"].data.shape == (1, 4, 3, 32, 32)
    assert batch.media["pointcloud"].data.shape == (2, 128, 3)
    for modality, ph in PLACEHOLDERS.items():
        counts = (batch.input_ids == tok.convert_tokens_to_ids(ph)).sum(1)
        per_row = torch.bincount(batch.media[modality].sample_index, minlength=len(batch))
        assert torch.equal(counts, per_row * K[modality])
    lengths = [len(i.input_ids) for i in items]
    assert batch.input_ids.shape == (4, max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()
    assert (batch.input_ids[batch.attention_mask == 0] == tok.pad_token_id).all()


def test_left_padding_for_generation(tok, media):
    p = proc(tok, training=False)
    items = [p(chat([img(media)], "<image> Colour?")), p(chat([], "A much longer question without any media?"))]
    batch = build_collator(tok, pad_side="left")(items)
    assert batch.attention_mask[:, -1].tolist() == [1, 1]  # prompts end together, ready to generate
    short = len(items[0].input_ids)
    assert torch.equal(batch.input_ids[0, -short:], items[0].input_ids)
    assert (batch.input_ids[0, :-short] == tok.pad_token_id).all()
    assert build_collator(tok)([None, None]) is None


def test_missing_media_tokens_and_unknown_fusion():
    t = tiny_tokenizer()
    with pytest.raises(ValueError, match="add_media_tokens"):
        Processor(t, get_template("vicuna_lamm"), SPECS)
    add_media_tokens(t)
    with pytest.raises(TypeError, match="TextLayout"):
        Processor(t, get_template("vicuna_lamm"), SPECS, layout="xattn")
