"""Transcript normalisation before WER: Whisper's English text normaliser, so that a
transcript is not charged for writing what was said differently.

Both texts go through the same function: lower case; punctuation, brackets and fillers
(hmm, um, uh) removed; contractions expanded ("can't" -> "can not", "we're" -> "we are");
titles spelled out ("Mr." -> "mister"); numbers, ordinals and currency as digits
("twenty first" -> "21st", "one hundred and one" -> "101", "five dollars" -> "$5");
British spellings as American ("colour" -> "color"). The normaliser is transformers'
copy of OpenAI Whisper's (``EnglishTextNormalizer``); its spelling map, which transformers
reads from a hub tokenizer's ``normalizer.json``, is Whisper's own list, shipped beside this
module (english_spelling.json, MIT) so nothing is downloaded. SPELLING_ADDITIONS extends it
with a few variants Whisper's list lacks.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

SPELLING_FILE = Path(__file__).with_name("english_spelling.json")

SPELLING_ADDITIONS = {
    "ok": "okay",  # Whisper writes both; the list only has British -> American spellings
    "alright": "all right",
    "cannot": "can not",  # the normaliser already writes "can't" as "can not"
}


@functools.cache
def english_normalizer() -> Callable[[str], str]:
    """Whisper's EnglishTextNormalizer with the shipped spelling map (built once: it
    compiles many patterns; imported late: transformers takes seconds to import)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = json.loads(SPELLING_FILE.read_text(encoding="utf-8"))["mapping"]
    return EnglishTextNormalizer({**mapping, **SPELLING_ADDITIONS})


def normalize_text(text: str) -> str:
    """The comparable form of a transcript (see module docstring); "" when nothing is left.

    Tokens without a letter or digit are dropped: the normaliser keeps "." and "$" for
    figures like "3.5" and "$5", and leaves a stray "." of an ellipsis ("I see..." ->
    "i see ."), which WER would count as a word."""
    return " ".join(w for w in english_normalizer()(text).split()
                    if any(c.isalnum() for c in w))
