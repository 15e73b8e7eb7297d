"""Prompt templates: render a Sample into text segments, each marked as trained (response) or not.

Picked by name in config (`template: vicuna_lamm | mmgpt | chat | document`). Media stay as
placeholder markers inside the text; the processor turns them into token blocks. A conversation
that ends with a user turn is rendered with the assistant's prompt at the end (ready to generate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lamm.datasets.sample import MARKER_RE, MODALITY_OF_MARKER, Sample, Turn
from lamm.datasets.system_prompts import system_prompt_for
from lamm.suggest import did_you_mean


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

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        raise NotImplementedError


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


_MEDIA_LABEL = {"image": "Image", "video": "Video", "pointcloud": "Point Cloud"}


class MmgptTemplate(Template):
    """Multimodal-GPT's unified instruction layout (our wording of its preamble).

    Vision-language: `### Image:` block, `### Instruction:`, optional `### Input:`, `### Response:`;
    language-only prompts drop the media block; later turns continue with Instruction/Response pairs.
    Media marked in the first user turn move into the media block; later turns keep theirs inline.
    """

    name = "mmgpt"
    PREAMBLE = "The following is an instruction that describes a task{extra}. Write a response that completes the request appropriately."

    def _preamble(self, has_media: bool, has_input: bool) -> str:
        extra = []
        if has_media:
            extra.append("together with the media it refers to")
        if has_input:
            extra.append("paired with an input that gives further context")
        return self.PREAMBLE.format(extra=(", " + " and ".join(extra)) if extra else "")

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        _require_chat(sample, self.name)
        eos = _eos(tokenizer)
        first = sample.turns[0] if sample.turns else Turn("user", "")
        markers = MARKER_RE.findall(first.text)
        default = self._preamble(bool(markers), bool(first.input))
        system = _system(self.system_prompt, default, sample)
        segs: list[Segment] = [Segment(system + "\n\n", False)] if system else []
        for i, turn in enumerate(sample.turns):
            if turn.role == "user":
                text = turn.text
                block = ""
                if i == 0 and markers:
                    text = " ".join(MARKER_RE.sub(" ", text).split())
                    block = "".join(f"### {_MEDIA_LABEL[MODALITY_OF_MARKER[m]]}:\n{m}\n\n" for m in markers)
                body = f"{block}### Instruction:\n{text}\n\n"
                if turn.input:
                    body += f"### Input:\n{turn.input}\n\n"
                segs.append(Segment(body, False))
            else:
                segs.append(Segment("### Response:\n", False))
                segs.append(Segment(turn.text + eos, True))
                segs.append(Segment("\n\n", False))
        if sample.turns and sample.turns[-1].role == "user":
            segs.append(Segment("### Response:\n", False))
        return segs


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


TEMPLATES: dict[str, Callable[..., Template]] = {
    t.name: t for t in (VicunaLammTemplate, MmgptTemplate, ChatTemplate, DocumentTemplate)
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
