"""Turning free model text into answers: an option, a number, boxes. None means unparseable.

Decisions: matching is case-insensitive on whitespace-normalised text; an option label wins over an
option's text ("B" or "(B)" or "B." at the start); otherwise the output must contain exactly one
option as a whole phrase (the longest if one contains another, so "a red circle on the left" beats
"red"); two different options found -> unparseable (counted wrong, listed in report.md).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

NUMBER_WORDS = {
    "zero": 0, "none": 0, "no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
}
_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")
_BOX_RE = re.compile(  # 4 numbers (2D) or 6 (3D) in brackets; any other count is not a box
    r"(?P<label>[A-Za-z][A-Za-z _-]*?)?\s*[:\-]?\s*[\[(]\s*"
    r"(?P<coords>-?\d*\.?\d+(?:\s*,\s*-?\d*\.?\d+){3}(?:(?:\s*,\s*-?\d*\.?\d+){2})?)\s*[\])]"
)


def norm(text: Any) -> str:
    """Lower case, collapse whitespace, strip surrounding punctuation."""
    return " ".join(str(text).lower().split()).strip(" .,:;!?\"'")


def _label_at_start(text: str, labels: Sequence[str]) -> int | None:
    """Index of a short label ("A", "(a)", "1.", "foo") that the answer starts with, if any."""
    head = text.strip()
    for i, label in enumerate(labels):
        lab = re.escape(norm(label))
        if re.match(rf"^[(\[]?{lab}[)\]]?(?:[.:,)\s]|$)", head.lower()):
            return i
    return None


def parse_option(raw: str, options: Sequence[str], labels: Sequence[str] | None = None) -> str | None:
    """The option the output names, or None (no option or several different ones)."""
    if not options:
        return norm(raw) or None
    labels = list(labels or options)
    text = norm(raw)
    if not text:
        return None
    for i, label in enumerate(labels):  # exact answer: a label or an option text
        if text == norm(label):
            return options[i]
    for i, opt in enumerate(options):
        if text == norm(opt):
            return opt
    if labels != list(options):
        i = _label_at_start(text, labels)
        if i is not None:
            return options[i]
    found = []
    for i, (opt, label) in enumerate(zip(options, labels)):
        for phrase in {norm(opt), norm(label)}:
            if phrase and re.search(rf"(?<![\w]){re.escape(phrase)}(?![\w])", text):
                found.append((len(phrase), i))
    if not found:
        return None
    hits = {i for _, i in found}
    if len(hits) == 1:
        return options[hits.pop()]
    # Several options appear: accept only if the longest hit contains every other one.
    found.sort(reverse=True)
    best = found[0][1]
    best_text = norm(options[best])
    if all(norm(options[i]) in best_text or norm(labels[i]) in best_text for _, i in found):
        return options[best]
    return None


def parse_number(raw: str) -> float | None:
    """The first number in the text (digits or an English number word), or None."""
    text = norm(raw)
    m = _NUM_RE.search(text)
    words = [(text.find(w), v) for w, v in NUMBER_WORDS.items() if re.search(rf"\b{w}\b", text)]
    cands = ([(m.start(), float(m.group()))] if m else []) + [(p, float(v)) for p, v in words if p >= 0]
    if not cands:
        return None
    return min(cands)[1]


def parse_boxes(raw: str) -> list[list[Any]] | None:
    """Boxes written as `label [x1, y1, x2, y2]` (2D) or `label [x1, y1, z1, x2, y2, z2]` (3D, min corner
    then max corner), label optional -> [[label, *coords], ...] in text order.

    Returns None if the text holds no box at all; a box with a max below its min (x2 < x1, ...) is
    dropped, and so is a bracket of another count of numbers (5, 7, ...).
    """
    out = []
    for m in _BOX_RE.finditer(raw):
        coords = [float(v) for v in m.group("coords").split(",")]
        d = len(coords) // 2
        if any(coords[d + i] < coords[i] for i in range(d)):
            continue
        label = re.sub(r"^(?:(?:and|then|also|a|an|the)\s+)+", "", norm(m.group("label") or ""))
        out.append([label, *coords])
    return out or None


# -- VQA answer normalisation (the official VQA v2 evaluation script) -------------------------------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "im": "i'm", "ive": "i've", "isnt": "isn't",
    "itd": "it'd", "itll": "it'll", "lets": "let's", "shouldnt": "shouldn't", "thats": "that's",
    "theres": "there's", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "werent": "weren't",
    "whats": "what's", "wheres": "where's", "whos": "who's", "wont": "won't", "wouldnt": "wouldn't",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)


def _process_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _MANUAL_MAP.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_punctuation(answer: str) -> str:
    """Only the punctuation step of the official VQA processing (VQAv2's script applies just this to human
    answers, and only when they disagree)."""
    return _process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())


def vqa_normalize(answer: str) -> str:
    """The official VQA answer processing: punctuation, digits, articles, contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(text))
