"""Transcript normalisation before WER, as in RLAIF-SPA: lower-case, number words 0-99 to
digits, punctuation removed, whitespace collapsed. Both texts go through the same function,
so "Twenty-one!" and "21" agree."""

from __future__ import annotations

import re

UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_UNIT = {w: i for i, w in enumerate(UNITS)}
_TEN = {w: 20 + 10 * i for i, w in enumerate(TENS)}


def normalize_text(text: str) -> str:
    """The comparable form of a transcript (see module docstring)."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^\w\s']|_", " ", text).replace("'", "")
    return " ".join(_numbers_to_digits(text.split()))


def _numbers_to_digits(words: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in _TEN:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if nxt in _UNIT and 0 < _UNIT[nxt] < 10:
                out.append(str(_TEN[w] + _UNIT[nxt]))
                i += 2
                continue
            out.append(str(_TEN[w]))
        else:
            out.append(str(_UNIT[w]) if w in _UNIT else w)
        i += 1
    return out
