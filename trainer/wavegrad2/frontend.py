"""Text front end: espeak-ng phonemes, with the sample at which espeak-ng speaks each one.

espeak-ng's library (libespeak-ng.so.1, the Debian package ``espeak-ng``) reports a
phoneme event with its audio position while it synthesises. Those positions are the
aligner-free duration source of ``rlaif pretrain wavegrad2`` (see ``corpus.durations``),
and the phoneme strings are the model's input symbols, so they must depend on the text
alone. The library keeps state between syntheses that its API cannot reset (the same text
spoken twice in one process comes out up to 20 samples longer or shorter), so texts are
spoken by the fork-per-render workers of ``rlaif.trainer.audio``: every render starts from
the same freshly loaded library, and threads speak in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlaif.trainer.audio import espeak_phonemes
from rlaif.trainer.espeak_worker import LIBRARY

__all__ = ["LIBRARY", "PAUSE", "START", "VOICE", "Speech", "phonemize", "speak"]

VOICE = "en-us"
PAUSE = "_"
"""espeak-ng reports pauses and word boundaries as phonemes with no name; they become this."""
START = "^"
"""Silence before the first phoneme."""


@dataclass(frozen=True)
class Speech:
    """espeak-ng's rendering of one text."""

    audio: np.ndarray
    """float32 mono at ``sample_rate``."""
    sample_rate: int
    phonemes: list[str]
    """``START`` then one IPA phoneme (or ``PAUSE``) per espeak-ng phoneme event."""
    starts: list[int]
    """Sample at which each phoneme begins (``START`` begins at 0)."""


def speak(text: str) -> Speech:
    """Phonemes, their start samples and the audio of ``text`` as spoken by espeak-ng."""
    if not text.strip():
        raise ValueError("cannot phonemise an empty text")
    audio, rate, events = espeak_phonemes(text, VOICE)
    return Speech(audio, rate, [START] + [name or PAUSE for name, _ in events],
                  [0] + [sample for _, sample in events])


def phonemize(text: str) -> list[str]:
    """The model's input symbols for ``text``."""
    return speak(text).phonemes
