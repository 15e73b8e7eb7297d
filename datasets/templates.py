"""Prompt templates: render a Sample into text segments, each marked as trained (response) or not.

Picked by name in config (`template: vicuna_lamm | mmgpt | chat | document | openflamingo_caption |
openflamingo_vqa | blip2 | lamm`). Media stay as placeholder markers inside the text; the processor turns them into
token blocks. A conversation
that ends with a user turn is rendered with the assistant's prompt at the end (ready to generate).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from lamm.datasets.sample import MARKER_RE, MODALITY_OF_MARKER, Sample, Turn
from lamm.datasets.system_prompts import system_prompt_for
from lamm.suggest import did_you_mean
from lamm.tokens import END_OF_CHUNK


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; `train` means its tokens carry the loss."""

    text: str
    train: bool


class TemplateError(ValueError):
    """The template cannot render this sample or tokenizer (a configuration problem, not bad data)."""


def _eos(tokenizer) -> str:
    if tokenizer.eos_token is None:
        raise TemplateError("the tokenizer has no eos_token; the response's end-of-turn token cannot be trained")
    return tokenizer.eos_token


def _user_text(turn: Turn) -> str:
    return f"{turn.text}\n{turn.input}" if turn.input else turn.text


def _system(setting: str | None, default: str | None, sample: Sample) -> str | None:
    """Resolve `system_prompt` config: None -> template default, "task" -> LAMM task prompt, "none" -> none,
    "empty" -> an empty system turn (stops chat templates such as SmolLM2's inserting their default one)."""
    choice = default if setting is None else setting
    if choice is None or choice == "none":
        return None
    if choice == "empty":
        return ""
    if choice == "task":
        return system_prompt_for(sample.task_type, sample.modalities)
    return choice


def _require_chat(sample: Sample, name: str) -> None:
    if sample.kind != "chat":
        raise TemplateError(f"template {name!r} renders conversations; sample {sample.id!r} is a {sample.kind} "
                            "(use template 'document')")


class Template:
    """Base class: `render(sample, tokenizer) -> list[Segment]`."""

    name = "base"
    # Whether rendered text already holds the BOS token (chat templates write it themselves).
    renders_bos = False
    # Whether rendered text already closes each medium's chunk (else the processor does, per the fusion's layout).
    renders_chunk_end = False
    # Text that ends a trained answer instead of EOS: generation stops at it where it is one token.
    stop_strings: tuple[str, ...] = ()

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        raise NotImplementedError

    def reply(self, generated: str) -> str:
        """The answer in generated text (templates that train an end marker before EOS cut it off)."""
        return generated.strip()


class VicunaLammTemplate(Template):
    """LAMM's Vicuna-style layout: task system prompt, then `### Human:` / `### Assistant:` turns."""

    name = "vicuna_lamm"

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        _require_chat(sample, self.name)
        eos = _eos(tokenizer)
        segs: list[Segment] = []
        system = _system(self.system_prompt, "task", sample)
        if system:
            segs.append(Segment(system + "\n\n", False))
        for turn in sample.turns:
            if turn.role == "user":
                segs.append(Segment(f"### Human: {_user_text(turn)}\n", False))
            else:
                # The space after the colon belongs to the prompt, so generation starts right at the answer.
                segs.append(Segment("### Assistant: ", False))
                segs.append(Segment(turn.text + eos, True))
                segs.append(Segment("\n", False))
        if sample.turns and sample.turns[-1].role == "user":
            segs.append(Segment("### Assistant: ", False))
        return segs


class LammTemplate(Template):
    """LAMM's layout as its code writes it (OpenGVLab/LAMM src/model/LAMM/openlamm.py: make_prompt_start,
    build_one_instance, prepare_generation_embedding): `### Human: <Img>` + the image + `</Img> {question}`
    and `\n### Assistant: `; each answer is trained with `\n###` after it (no EOS: LAMM stops generating at
    `###`); a later turn is `Human: {question}\n### Assistant: `; a prompt to generate from ends
    `### Assistant:` with no space, as LAMM's generation prompt does. No system prompt by default, as LAMM
    generates (`system_prompt=task` puts one first, followed by a blank line, as LAMM's training does).
    """

    name = "lamm"
    END = "\n###"
    stop_strings = ("###",)
    TAGS = {"image": ("<Img>", "</Img>"), "pointcloud": ("<Pcl>", "</Pcl>")}

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        _require_chat(sample, self.name)
        system = _system(self.system_prompt, None, sample)
        segs: list[Segment] = [Segment(system + "\n\n", False)] if system else []
        for i, turn in enumerate(sample.turns):
            if turn.role == "assistant":
                segs.append(Segment(turn.text + self.END, True))
                continue
            media = "".join(self._tagged(m) for m in MARKER_RE.findall(turn.text))
            question = _user_text(Turn("user", MARKER_RE.sub("", turn.text).strip(), input=turn.input))
            head = "### Human: " if i == 0 else "Human: "  # later turns follow the `\n###` of an answer
            answered = i + 1 < len(sample.turns)
            segs.append(Segment(f"{head}{media + ' ' if media else ''}{question}\n### Assistant:"
                                f"{' ' if answered else ''}", False))
        return segs

    def _tagged(self, marker: str) -> str:
        start, end = self.TAGS.get(MODALITY_OF_MARKER[marker], ("", ""))
        return f"{start}{marker}{end}"

    def reply(self, generated: str) -> str:
        return generated.split("###", 1)[0].strip()


_MEDIA_LABEL = {"image": "Image", "video": "Video", "pointcloud": "Point Cloud"}


class MmgptTemplate(Template):
    """Multimodal-GPT's instruction layout, byte for byte as its datasets write it (Alpaca's preamble;
    `### Image:`, `### Instruction:`, optional `### Input:`, `### Response:` sections joined by
    "\n\n### "; each response trained with its `### End.` and EOS after it; later turns continue with
    Instruction/Response pairs, as its dialogue data). Media marked in the first user turn move into
    the media block; later turns keep theirs inline.
    """

    name = "mmgpt"
    PREAMBLE = ("Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.")
    SEP = "\n\n### "
    END = "### End."  # Multimodal-GPT appends it to every response it trains on

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        _require_chat(sample, self.name)
        eos = _eos(tokenizer)
        first = sample.turns[0] if sample.turns else Turn("user", "")
        markers = MARKER_RE.findall(first.text) if first.role == "user" else []
        system = _system(self.system_prompt, self.PREAMBLE, sample)
        segs: list[Segment] = [Segment(system, False)] if system else []
        for i, turn in enumerate(sample.turns):
            if turn.role == "user":
                text = turn.text
                block = ""
                if i == 0 and markers:
                    text = MARKER_RE.sub("", text).strip()
                    block = "".join(f"{self.SEP}{_MEDIA_LABEL[MODALITY_OF_MARKER[m]]}:\n{m}" for m in markers)
                body = f"{block}{self.SEP}Instruction:\n{text}"
                if turn.input:
                    body += f"{self.SEP}Input:\n{turn.input}"
                segs.append(Segment(body, False))
            else:
                segs.append(Segment(f"{self.SEP}Response:\n", False))
                segs.append(Segment(turn.text + self.END + eos, True))
        if sample.turns and sample.turns[-1].role == "user":
            segs.append(Segment(f"{self.SEP}Response:\n", False))
        if not system and segs:  # without the preamble the text starts at its first section
            segs[0] = Segment(segs[0].text.removeprefix("\n\n"), segs[0].train)
        return segs

    def reply(self, generated: str) -> str:
        return generated.split(self.END, 1)[0].strip()


class ChatTemplate(Template):
    """The tokenizer's own chat template (`apply_chat_template`), split turn by turn.

    Each turn's text is the difference between renderings of growing message lists, so label
    boundaries are exact; the generation prompt (e.g. `<|im_start|>assistant\\n`) is not trained,
    the assistant's content and its end-of-turn token are.
    """

    name = "chat"
    renders_bos = True

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        _require_chat(sample, self.name)
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("template 'chat' needs a tokenizer with a chat_template; use vicuna_lamm or mmgpt")

        def render(msgs: list[dict[str, str]], gen: bool) -> str:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

        def diff(before: str, after: str) -> str:
            if not after.startswith(before):
                raise TemplateError(
                    "the tokenizer's chat template is not prefix-stable (rendering more messages changes earlier "
                    "text), so response labels cannot be placed exactly; use template vicuna_lamm or mmgpt"
                )
            return after[len(before):]

        msgs: list[dict[str, str]] = []
        system = _system(self.system_prompt, None, sample)
        if system is not None:
            msgs.append({"role": "system", "content": system})
        segs: list[Segment] = []
        prev = ""
        for turn in sample.turns:
            if turn.role == "assistant":
                prompt = render(msgs, True)
                segs.append(Segment(diff(prev, prompt), False))
                msgs.append({"role": "assistant", "content": turn.text})
                full = render(msgs, False)
                segs.append(Segment(diff(prompt, full), True))
            else:
                msgs.append({"role": "user", "content": _user_text(turn)})
                full = render(msgs, False)
                segs.append(Segment(diff(prev, full), False))
            prev = full
        if sample.turns and sample.turns[-1].role == "user":
            segs.append(Segment(diff(prev, render(msgs, True)), False))
        return [s for s in segs if s.text]


class DocumentTemplate(Template):
    """Interleaved documents: the text as is, every text token trained, EOS (trained) at the end."""

    name = "document"

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        text = "".join(t.text for t in sample.turns)
        return [Segment(text + _eos(tokenizer), True)]


class OpenFlamingoFewShotTemplate(Template):
    """OpenFlamingo's few-shot evaluation prompts: each example `<image>{prompt}{answer}<|endofchunk|>`,
    then the query `<image>{prompt}` (open_flamingo/eval: get_caption_prompt, get_vqa_prompt).

    Used for in-context examples by the data processor (a conversation of example user/assistant
    pairs) and the benchmark (`instruction: icl`). The template writes the chunk ends itself, whatever
    the model's fusion, and trains the answer with its `<|endofchunk|>` (the reply ends there).
    """

    renders_chunk_end = True

    def prompt(self, question: str) -> str:
        raise NotImplementedError

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        _require_chat(sample, self.name)
        segs: list[Segment] = []
        for turn in sample.turns:
            if turn.role == "user":
                markers = "".join(MARKER_RE.findall(turn.text))
                question = _user_text(Turn("user", MARKER_RE.sub("", turn.text).strip(), input=turn.input))
                segs.append(Segment(markers + self.prompt(question), False))
            else:
                segs.append(Segment(turn.text + END_OF_CHUNK, True))
        return segs


class OpenFlamingoCaptionTemplate(OpenFlamingoFewShotTemplate):
    """`<image>Output:{caption}<|endofchunk|>` (the question, if any, is not shown: OpenFlamingo's captioning)."""

    name = "openflamingo_caption"

    def prompt(self, question: str) -> str:
        return "Output:"

    def reply(self, generated: str) -> str:
        return generated.split("Output", 1)[0].strip()  # as OpenFlamingo post-processes captions


class OpenFlamingoVqaTemplate(OpenFlamingoFewShotTemplate):
    """`<image>Question:{question} Short answer:{answer}<|endofchunk|>`."""

    name = "openflamingo_vqa"

    def prompt(self, question: str) -> str:
        return f"Question:{question} Short answer:"

    def reply(self, generated: str) -> str:
        # OpenFlamingo's VQA post-processing: up to the next section word, then the first clause.
        return re.split(", ", re.split("Question|Answer|Short", generated, maxsplit=1)[0], maxsplit=1)[0].strip()


class Blip2Template(Template):
    """BLIP-2's prompt: the image's queries, then `Question: {question} Answer:` and the answer after a
    space, trained with EOS; a turn with no text besides its media is a caption (the queries alone prompt
    it, as in BLIP-2's generative pre-training). A system prompt, if set, goes first on its own line.
    """

    name = "blip2"

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        _require_chat(sample, self.name)
        eos = _eos(tokenizer)
        system = _system(self.system_prompt, None, sample)
        segs: list[Segment] = [Segment(system + "\n", False)] if system else []
        asked = False
        for turn in sample.turns:
            if turn.role == "user":
                markers = "".join(MARKER_RE.findall(turn.text))
                question = _user_text(Turn("user", MARKER_RE.sub("", turn.text).strip(), input=turn.input))
                asked = bool(question)
                prompt = f"Question: {question} Answer:" if asked else ""
                gap = " " if segs and segs[-1].train else ""  # a later turn, after an answer
                segs.append(Segment(gap + markers + prompt, False))
            else:
                segs.append(Segment((" " if asked else "") + turn.text + eos, True))
        return [s for s in segs if s.text]


TEMPLATES: dict[str, Callable[..., Template]] = {
    t.name: t for t in (VicunaLammTemplate, MmgptTemplate, ChatTemplate, DocumentTemplate,
                        OpenFlamingoCaptionTemplate, OpenFlamingoVqaTemplate, Blip2Template,
                        LammTemplate)
}


def get_template(name: str, **options: Any) -> Template:
    """Build the template registered as `name`; unknown names list the known ones."""
    if name not in TEMPLATES:
        raise TemplateError(f"unknown template {name!r}.{did_you_mean(name, TEMPLATES)} "
                            f"Known templates: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name](**options)


# The template each built-in data format renders with when its config names none.
FORMAT_TEMPLATES = {"lamm": "vicuna_lamm", "llava": "vicuna_lamm", "webdataset": "vicuna_lamm", "mmgpt": "mmgpt",
                    "interleaved": "document"}


def format_template(data_format: str) -> str | None:
    """The template data format `data_format` (a dataset registry name) renders with by default; None if unknown."""
    return FORMAT_TEMPLATES.get(data_format)
