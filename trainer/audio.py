"""Audio plumbing shared by the policies: espeak-ng rendering and sample WAV files."""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from rlaif.audio import resample
from rlaif.constants import SAMPLE_RATE
from rlaif.files import atomic_write_bytes


class SpeechSynthesisError(RuntimeError):
    """espeak-ng failed or is missing; the message carries its stderr."""


def espeak_ssml(ssml: str, voice: str = "en-us") -> np.ndarray:
    """Render SSML with espeak-ng (-m) to 16 kHz float32.

    espeak-ng's --stdout WAV has an unknown-length header libsndfile refuses, so it writes
    to a temporary file.
    """
    with tempfile.TemporaryDirectory(prefix="rlaif-espeak-") as tmp:
        wav = Path(tmp) / "out.wav"
        try:
            proc = subprocess.run(["espeak-ng", "-m", "-v", voice, "-w", str(wav), "--stdin"],
                                  input=ssml.encode(), capture_output=True, timeout=60)
        except FileNotFoundError:
            raise SpeechSynthesisError("espeak-ng is not installed (apt-get install espeak-ng)"
                                       ) from None
        if proc.returncode != 0 or not wav.exists():
            raise SpeechSynthesisError(f"espeak-ng failed ({proc.returncode}): "
                                       f"{proc.stderr.decode(errors='replace')[-500:]}")
        audio, rate = sf.read(wav, dtype="float32")
    return resample(audio, rate)


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write a 16-bit WAV atomically."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1, 1), rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())
