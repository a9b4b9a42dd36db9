"""Text front end: espeak-ng phonemes, with the sample at which espeak-ng speaks each one.

espeak-ng's library (libespeak-ng.so.1, the Debian package ``espeak-ng``) reports a
phoneme event with its audio position while it synthesises. Those positions are the
aligner-free duration source of ``rlaif pretrain wavegrad2`` (see ``corpus.durations``),
and the phoneme strings are the model's input symbols. The library keeps global state, so
every call holds one process-wide lock.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from functools import cache

import numpy as np

LIBRARY = "libespeak-ng.so.1"
VOICE = "en-us"
PAUSE = "_"
"""espeak-ng reports pauses and word boundaries as phonemes with no name; they become this."""
START = "^"
"""Silence before the first phoneme."""

_AUDIO_OUTPUT_RETRIEVAL = 1
_INIT_PHONEME_EVENTS = 0x1
_INIT_PHONEME_IPA = 0x2
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` from speak_lib.h."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


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


class _Espeak:
    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL(LIBRARY)
        except OSError as exc:
            raise RuntimeError(f"espeak-ng library {LIBRARY} not found; install the Debian "
                               f"package espeak-ng ({exc})") from None
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_RETRIEVAL, 0, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise (is espeak-ng-data installed?)")
        if self.lib.espeak_SetVoiceByName(VOICE.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {VOICE!r}")
        self.lock = threading.Lock()
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[str, int]] = []
        self.callback = _Callback(self._on_synth)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self.callback)

    def _on_synth(self, wav: ctypes.Array, count: int, events: ctypes.Array) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                name = bytes(events[i].id.string).decode("utf-8", "replace")
                self.events.append((name or PAUSE, events[i].sample))
            i += 1
        return 0

    def speak(self, text: str) -> Speech:
        data = text.encode("utf-8") + b"\0"
        with self.lock:
            self.chunks, self.events = [], []
            err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                        None, None)
            if err != 0 or self.lib.espeak_Synchronize() != 0:
                raise RuntimeError(f"espeak-ng could not speak {text[:40]!r} (error {err})")
            chunks, events = self.chunks, self.events
        audio = (np.concatenate(chunks) if chunks else np.zeros(0, np.int16))
        return Speech(audio.astype(np.float32) / 32768.0, self.sample_rate,
                      [START] + [p for p, _ in events], [0] + [s for _, s in events])


@cache
def _espeak() -> _Espeak:
    return _Espeak()


def speak(text: str) -> Speech:
    """Phonemes, their start samples and the audio of ``text`` as spoken by espeak-ng."""
    if not text.strip():
        raise ValueError("cannot phonemise an empty text")
    return _espeak().speak(text)


def phonemize(text: str) -> list[str]:
    """The model's input symbols for ``text``."""
    return speak(text).phonemes
