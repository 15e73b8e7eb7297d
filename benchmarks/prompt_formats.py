"""Few-shot prompt formats as the model families' evaluations write them.

A format gives, per prompt kind, the text of one demonstration (`{answer}` filled, closed with
`<|endofchunk|>`) and of the query (`{answer}` empty, nothing after it):

    openflamingo  caption         <image>Output:{answer}
                  vqa             <image>Question:{question} Short answer:{answer}
                  classification  <image>Output:{answer}
                  hateful_memes   <image>is an image with: '{text}' written on it. Is it hateful? Answer:{answer}
    idefics       caption         <image>Caption: {answer}
                  vqa             <image>Question:{question} Answer: {answer}
                  classification  <image>Output:{answer}
                  hateful_memes   <image>is an image with: '{text}' written on it. Is it hateful? Answer: {answer}

Captioning and VQA demonstrations are followed by a newline, classification ones are not (as
OpenFlamingo's evaluation joins them). The whole prompt -- demonstrations and query -- is one
piece of text; `FewShotPromptTemplate` renders it verbatim (media markers where they stand, the
fusion's layout applied by the data processor) and closes a scored or trained answer with
`<|endofchunk|>`. Instruction-tuned models use their own chat template instead (format `chat`:
demonstrations as earlier user/assistant turns), which needs no format here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lamm.datasets.sample import Sample
from lamm.datasets.templates import (OpenFlamingoCaptionTemplate, OpenFlamingoVqaTemplate, Segment, Template,
                                     TemplateError)
from lamm.tokens import END_OF_CHUNK, PLACEHOLDERS

PROMPT_KINDS = ("caption", "vqa", "classification", "hateful_memes")
IMAGE = PLACEHOLDERS["image"]


@dataclass(frozen=True)
class PromptFormat:
    """One family's prompt text per kind; `{image}` marks the medium, `{answer}` ends every prompt."""

    name: str
    prompts: dict[str, str]
    separators: dict[str, str]  # what follows each demonstration, per kind
    end: str = END_OF_CHUNK

    def demonstration(self, kind: str, answer: str, question: str = "", text: str = "", image: bool = True) -> str:
        """One solved example; `image=False` drops its image marker (text-only zero-shot demonstrations)."""
        body = self.prompts[kind].format(image=IMAGE if image else "", question=question, text=text, answer=answer)
        return body + self.end + self.separators[kind]

    def query(self, kind: str, question: str = "", text: str = "") -> str:
        """The prompt the model continues."""
        return self.prompts[kind].format(image=IMAGE, question=question, text=text, answer="")


_HM = "{image}is an image with: '{text}' written on it. Is it hateful? Answer:"
FORMATS: dict[str, PromptFormat] = {
    "openflamingo": PromptFormat(
        "openflamingo",
        {"caption": "{image}Output:{answer}", "vqa": "{image}Question:{question} Short answer:{answer}",
         "classification": "{image}Output:{answer}", "hateful_memes": _HM + "{answer}"},
        {"caption": "\n", "vqa": "\n", "classification": "", "hateful_memes": ""}),
    "idefics": PromptFormat(
        "idefics",
        {"caption": "{image}Caption: {answer}", "vqa": "{image}Question:{question} Answer: {answer}",
         "classification": "{image}Output:{answer}", "hateful_memes": _HM + " {answer}"},
        {"caption": "\n", "vqa": "\n", "classification": "", "hateful_memes": ""}),
}
FORMAT_NAMES = (*FORMATS, "chat")

# How a generated continuation becomes the answer (OpenFlamingo's post-processing, used for both families).
REPLIES: dict[str, Callable[[str], str]] = {
    "caption": lambda text: OpenFlamingoCaptionTemplate().reply(text).replace('"', ""),
    "vqa": OpenFlamingoVqaTemplate().reply,
    "classification": str.strip,
    "hateful_memes": str.strip,
}


class FewShotPromptTemplate(Template):
    """Renders a prompt written by a `PromptFormat` verbatim; an answer after it is trained/scored with
    `<|endofchunk|>` (where OpenFlamingo ends each chunk, so generation stops there too)."""

    renders_chunk_end = True  # the prompt text closes its demonstrations' chunks itself

    def __init__(self, fmt: PromptFormat, kind: str) -> None:
        super().__init__(system_prompt=None)
        if kind not in PROMPT_KINDS:
            raise TemplateError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}, found {kind!r}")
        self.format, self.kind = fmt, kind
        self.name = f"{fmt.name}_{kind}"

    def render(self, sample: Sample, tokenizer) -> list[Segment]:
        segs = []
        for turn in sample.turns:
            if turn.role == "assistant":
                segs.append(Segment(turn.text + self.format.end, True))
            else:
                segs.append(Segment(turn.text, False))
        return segs

    def reply(self, generated: str) -> str:
        return REPLIES[self.kind](generated)
