"""Audio plumbing shared by the policies: espeak-ng rendering and sample WAV files.

espeak-ng renders through its library in worker processes (trainer/espeak_worker.py), one
per rendering thread and mode, started on first use: each loads the library and the voice
once and forks a child per render, so every render is a function of its text alone,
whatever was rendered before (SSML: ``espeak-ng -m -v <voice>``'s audio to the sample),
without starting a program and loading its voice each time (about twice the CPU). Threads
render in parallel, each on a worker of its own.
"""

from __future__ import annotations

import atexit
import io
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import soundfile as sf

from rlaif.audio import resample
from rlaif.constants import SAMPLE_RATE
from rlaif.files import atomic_write_bytes
from rlaif.trainer import espeak_worker
from rlaif.trainer.espeak_worker import CRASHED, EVENT, NO_VOICE, PHONEMES, SSML

VOICE = "en-us"
INSTALL_HINT = "apt-get install espeak-ng"
TIMEOUT_S = 60.0
"""A render that takes longer is abandoned (its worker is killed and replaced)."""
WORKER = Path(espeak_worker.__file__)


class SpeechSynthesisError(RuntimeError):
    """espeak-ng is missing or could not speak a text."""


class _WorkerLost(SpeechSynthesisError):
    """The worker process did not answer (exited or timed out)."""


class _Worker:
    """One espeak_worker process (in one mode) and its pipes; used by one thread at a time."""

    def __init__(self, mode: str) -> None:
        # its own session: a kill takes the render it forked too
        self.proc = subprocess.Popen([sys.executable, "-I", str(WORKER), VOICE, mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        try:
            rate, why = self._answer()
        except _WorkerLost:
            self.close()
            raise
        if rate <= 0:
            self.close()
            raise SpeechSynthesisError(f"espeak-ng cannot start ({INSTALL_HINT}): "
                                       f"{why.decode(errors='replace')}")
        self.rate = rate

    def render(self, data: bytes, name: bytes) -> bytes:
        """The answer's payload (see espeak_worker) for UTF-8 text ``data`` in voice
        ``name``."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(struct.pack("<I", len(name)) + name
                                  + struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
        except OSError as exc:
            raise _WorkerLost(f"espeak-ng's worker is gone ({exc})") from None
        status, samples = self._answer()
        if status == NO_VOICE:
            raise SpeechSynthesisError(f"espeak-ng has no voice {name.decode()!r}")
        if status != 0:
            what = "crashed on" if status == CRASHED else f"failed (error {status}) on"
            raise SpeechSynthesisError(f"espeak-ng {what} {data.decode()[:80]!r}")
        return samples

    def _answer(self) -> tuple[int, bytes]:
        status, size = struct.unpack("<iI", self._read(8))
        return status, self._read(size)

    def _read(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        fd, data, deadline = self.proc.stdout.fileno(), bytearray(), time.monotonic() + TIMEOUT_S
        while len(data) < n:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise _WorkerLost(f"espeak-ng did not answer within {TIMEOUT_S:.0f} s")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise _WorkerLost(f"espeak-ng's worker exited (code {self.proc.poll()})")
            data += chunk
        return bytes(data)

    def close(self) -> None:
        with suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with suppress(OSError):
                pipe.close()  # type: ignore[union-attr]


class _Pool:
    """Idle workers of one mode; a thread takes one (starting it if none is idle) for one
    render. A worker that broke off (exited, timed out, interrupted) is killed, not
    returned: the next render starts a fresh one."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()

    @contextmanager
    def take(self) -> Iterator[_Worker]:
        worker = None
        while worker is None:
            try:
                worker = self.idle.get_nowait()
            except queue.Empty:
                worker = _Worker(self.mode)
            if worker.proc.poll() is not None:  # died while idle (killed, out of memory)
                worker.close()
                worker = None
        try:
            yield worker
        except _WorkerLost:
            worker.close()
            raise
        except SpeechSynthesisError:  # it answered: the text was refused, the worker is fine
            self.idle.put(worker)
            raise
        except BaseException:  # an answer may still be on its way: never reuse it
            worker.close()
            raise
        self.idle.put(worker)

    def close(self) -> None:
        """End the idle workers (at exit: a worker also ends when its stdin closes)."""
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


_pools = {mode: _Pool(mode) for mode in (SSML, PHONEMES)}


@atexit.register
def _close_pools() -> None:
    for pool in _pools.values():
        pool.close()


def _render(mode: str, text: str, voice: str) -> tuple[bytes, int]:
    """A worker's payload for ``text`` and its sample rate. Encoded first: text that is not
    UTF-8 is refused before it can cost a worker."""
    data, name = text.encode(), voice.encode()
    with _pools[mode].take() as worker:
        return worker.render(data, name), worker.rate


def _samples(payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0


def espeak_ssml(ssml: str, voice: str = VOICE) -> np.ndarray:
    """Render SSML as ``espeak-ng -m -v <voice>`` would, to 16 kHz float32."""
    payload, rate = _render(SSML, ssml, voice)
    return resample(_samples(payload), rate)


def espeak_phonemes(text: str, voice: str = VOICE
                    ) -> tuple[np.ndarray, int, list[tuple[str, int]]]:
    """Speak plain ``text``: float32 audio at the library's rate, that rate, and each
    phoneme espeak-ng spoke as (IPA name, or "" for a pause or word boundary; first
    sample)."""
    payload, rate = _render(PHONEMES, text, voice)
    count = struct.unpack_from("<I", payload)[0]
    end = 4 + count * EVENT.size
    events = [(name.rstrip(b"\0").decode("utf-8", "replace"), sample)
              for sample, name in EVENT.iter_unpack(payload[4:end])]
    return _samples(payload[end:]), rate, events


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write a 16-bit WAV atomically."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1, 1), rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())
