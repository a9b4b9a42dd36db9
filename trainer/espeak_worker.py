"""A process that speaks with libespeak-ng, each render in a fork of itself.

libespeak-ng keeps state between syntheses that its API cannot reset (the pitch-flutter
phase and the gain control of its wave generator, a voice changed by SSML), so a library
that renders twice in one process renders the second text differently from the first
time: other audio, phonemes at other samples. And espeak-ng 1.51's espeak_Terminate does
not free the voice, so loading a fresh instance per render leaks. This process loads the
library and the default voice once, then forks a child per request: the child starts from
the same untouched state every time, renders, sends its answer and exits, so every render
is a function of its text alone, with no per-render voice loading and nothing left behind.
Standard library only: run as ``python -I espeak_worker.py [voice [mode]]``.

Modes (the library's options are fixed when it starts, so a process serves one):
``ssml`` (the default) renders SSML as ``espeak-ng -m`` does; ``phonemes`` speaks plain
UTF-8 text and also reports each phoneme espeak-ng speaks, by IPA name, with the sample at
which it starts (espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_PHONEME_IPA).

Frames on stdout (little-endian): at start ``i32 rate, u32 n, n bytes of message`` (rate
<= 0: the message says why the library could not start); per request, read from stdin as
``u32 n, n bytes of voice, u32 m, m bytes of text``, the answer ``i32 status, u32 n, n
bytes of payload`` (status 0: spoken; NO_VOICE; CRASHED; else espeak_Synth's error). The
payload is the int16 samples; in ``phonemes`` mode preceded by ``u32 k`` and k ``EVENT``s.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from typing import NamedTuple

LIBRARY = "libespeak-ng.so.1"
NO_VOICE = -1
CRASHED = -2
SSML = "ssml"
PHONEMES = "phonemes"
EVENT = struct.Struct("<i8s")
"""A phoneme in a ``phonemes`` answer: its first sample, its IPA name (NUL-padded UTF-8;
empty for a pause or word boundary)."""
_AUDIO_OUTPUT_SYNCHRONOUS = 2
"""espeak_Synth calls the synth callback on the calling thread and returns when done."""
_INITIALIZE_PHONEME_EVENTS = 0x1
_INITIALIZE_PHONEME_IPA = 0x2
_INITIALIZE_DONT_EXIT = 0x8000
"""Report a missing espeak-ng-data as an error instead of exiting the process."""
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1


class _Mode(NamedTuple):
    options: int
    """espeak_Initialize's options."""
    synth_flags: int
    """espeak_Synth's flags."""


_MODES = {
    # espeakPHONEMES | espeakENDPAUSE | espeakSSML: the CLI's flags with -m
    SSML: _Mode(_INITIALIZE_DONT_EXIT, 0x100 | 0x1000 | 0x10),
    # espeakCHARS_UTF8: plain text, no pause added at the end
    PHONEMES: _Mode(_INITIALIZE_DONT_EXIT | _INITIALIZE_PHONEME_EVENTS
                    | _INITIALIZE_PHONEME_IPA, 0x1),
}


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


def _read(n: int) -> bytes | None:
    data = sys.stdin.buffer.read(n)
    return data if len(data) == n else None


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _frame(status: int, payload: bytes) -> bytes:
    return struct.pack("<iI", status, len(payload)) + payload


def _start(voice: bytes, mode: _Mode) -> tuple[ctypes.CDLL | None, int, str]:
    """The library, initialised for ``mode`` with ``voice``; or None, 0 and why not."""
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        return None, 0, f"{LIBRARY} could not be loaded: {exc}"
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, mode.options)
    if rate <= 0:
        return None, 0, "espeak_Initialize failed: is espeak-ng-data installed?"
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    if lib.espeak_SetVoiceByName(voice) != 0:
        return None, 0, f"espeak-ng has no voice {voice.decode()!r}"
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                 ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p,
                                 ctypes.c_void_p]
    return lib, rate, ""


def _speak(lib: ctypes.CDLL, mode: _Mode, default: bytes, voice: bytes, text: bytes) -> bytes:
    """In the forked child: the answer frame for one request."""
    samples, events = bytearray(), bytearray()

    def on_synth(wav: ctypes._Pointer[ctypes.c_short], count: int,
                 event: ctypes._Pointer[_Event]) -> int:
        if count > 0:
            samples.extend(ctypes.string_at(wav, 2 * count))
        i = 0
        while event[i].type != _EVENT_LIST_TERMINATED:
            if event[i].type == _EVENT_PHONEME:
                events.extend(EVENT.pack(event[i].sample, event[i].id.string))
            i += 1
        return 0

    callback = _Callback(on_synth)
    lib.espeak_SetSynthCallback(callback)
    if voice != default and lib.espeak_SetVoiceByName(voice) != 0:
        return _frame(NO_VOICE, b"")
    data = text + b"\0"
    status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, mode.synth_flags, None,
                              None)
    if status != 0:
        return _frame(status, b"")
    if mode.options & _INITIALIZE_PHONEME_EVENTS:
        samples[:0] = struct.pack("<I", len(events) // EVENT.size) + events
    return _frame(0, bytes(samples))


def main() -> None:
    default = (sys.argv[1] if len(sys.argv) > 1 else "en-us").encode()
    mode = _MODES[sys.argv[2] if len(sys.argv) > 2 else SSML]
    lib, rate, why = _start(default, mode)
    out = sys.stdout.fileno()
    _write(out, _frame(rate, why.encode()))
    if lib is None:
        return
    while (head := _read(4)) is not None:
        voice = _read(struct.unpack("<I", head)[0])
        size = _read(4)
        text = _read(struct.unpack("<I", size)[0]) if size is not None else None
        if voice is None or text is None:
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: render, answer, leave without running any cleanup
            os.close(r)
            try:
                _write(w, _speak(lib, mode, default, voice, text))
            finally:
                os._exit(0)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 1 << 20):
            chunks.append(chunk)
        os.close(r)
        _, code = os.waitpid(pid, 0)
        answer = b"".join(chunks)
        if code != 0 or len(answer) < 8 or len(answer) != 8 + struct.unpack("<I",
                                                                             answer[4:8])[0]:
            answer = _frame(CRASHED, b"")
        _write(out, answer)


if __name__ == "__main__":
    main()
