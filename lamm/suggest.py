"""Suggestions for a mistyped name: the one "Did you mean ...?" every error message uses."""
from __future__ import annotations

import difflib
from typing import Iterable


def closest(word: object, choices: Iterable[object]) -> str | None:
    """The choice most like `word` (difflib's ratio >= 0.6), or None when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return close[0] if close else None


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """" Did you mean 'x'?" for the closest choice, or "" when nothing is close (append to a sentence)."""
    match = closest(word, choices)
    return f" Did you mean {match!r}?" if match is not None else ""
