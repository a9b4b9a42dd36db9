"""Audio on the wire: 16-bit PCM in base64, as the reward-server contract carries it.

The client encodes, the server decodes; both use these functions so the two ends cannot
disagree on scaling or byte order. Decoding raises AudioError with a message that the
server prefixes with the field path (``items[3].audio.pcm16: ...``).
"""

from __future__ import annotations

import base64
import binascii
from fractions import Fraction

import numpy as np

from rlaif.constants import SAMPLE_RATE

PCM16_SCALE = 32767.0
PCM16_DTYPE = np.dtype("<i2")


class AudioError(ValueError):
    """Audio that cannot be decoded or used; the message says what is wrong."""


def encode_pcm16(audio: np.ndarray) -> str:
    """Float mono audio in [-1, 1] -> base64 little-endian int16 (values outside are clipped)."""
    samples = as_mono_float32(audio)
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    pcm = np.round(np.clip(samples, -1.0, 1.0) * PCM16_SCALE).astype(PCM16_DTYPE)
    return base64.b64encode(pcm.tobytes()).decode("ascii")


def decode_pcm16(data: object) -> np.ndarray:
    """Base64 little-endian int16 -> float32 in [-1, 1]; rejects anything but whole samples."""
    if not isinstance(data, str):
        raise AudioError(f"expected a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioError(f"not valid base64 ({exc})") from None
    if not raw:
        raise AudioError("audio is empty")
    if len(raw) % 2:
        raise AudioError(f"odd byte count {len(raw)}: pcm16 needs 2 bytes per sample")
    return (np.frombuffer(raw, dtype=PCM16_DTYPE).astype(np.float32) / PCM16_SCALE)


def pcm16_seconds(data: str, sample_rate: int) -> float:
    """Duration of base64 pcm16 without decoding it (to enforce limits before any work)."""
    padding = len(data) - len(data.rstrip("="))
    return max(0, len(data) * 3 // 4 - padding) / 2 / sample_rate


def as_mono_float32(audio: np.ndarray) -> np.ndarray:
    """A 1-D float32 view of ``audio``; (samples, channels) input is averaged to mono."""
    arr = np.asarray(audio)
    if arr.ndim == 2:
        arr = arr.mean(axis=1)
    if arr.ndim != 1:
        raise AudioError(f"expected mono audio (1-D), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise AudioError(f"expected float samples, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (exact rational ratio), float32 out; no-op at equal rates."""
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return as_mono_float32(audio)
    from scipy.signal import resample_poly  # imported here: the operator image has no scipy

    ratio = Fraction(target_sr, orig_sr).limit_denominator(1000)
    out = resample_poly(as_mono_float32(audio), ratio.numerator, ratio.denominator)
    return out.astype(np.float32)

