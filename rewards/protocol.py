"""The ``POST /v1/score`` request: parsing and validation, kept apart from HTTP.

Two stages, so the server can admit or refuse a request before it does any real work:
``read_items`` parses the JSON and measures the audio from the base64 lengths (no decoding),
refusing what is over the limits; ``decode_items`` then decodes and resamples. Problems with
the request as a whole raise RequestError (400/413); problems with one item become an
ItemError in that item's place, so the other items are still scored. Every message names
the field (``items[3].audio.pcm16: odd byte count 3 ...``).
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlaif.api.labels import LabelSchema
from rlaif.audio import AudioError, decode_pcm16, pcm16_seconds, resample
from rlaif.constants import (
    REWARD_MAX_AUDIO_SECONDS,
    REWARD_MAX_BODY_BYTES,
    REWARD_MAX_ITEMS,
    REWARD_MAX_REQUEST_AUDIO_SECONDS,
    SAMPLE_RATE,
)
from rlaif.rewards.scoring import ScoreInput

# The floor keeps work proportional to body size: at 8 kHz a second of audio costs at least
# 21 kB of base64, so a small body cannot ask for minutes of model time.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 384000
MAX_LABEL_CHARS = 100
_short = reprlib.Repr()  # values echoed in messages stay short
_short.maxlevel, _short.maxstring, _short.maxother = 2, 40, 40


@dataclass(frozen=True)
class Limits:
    """Per-request bounds; past them the request is refused with 413. Audio is counted in
    seconds (the same at any sample rate once resampled to the model's 16 kHz), references
    included; ``max_request_audio_seconds`` bounds the work one request can ask for."""

    max_items: int = REWARD_MAX_ITEMS
    max_body_bytes: int = REWARD_MAX_BODY_BYTES
    max_audio_seconds: float = REWARD_MAX_AUDIO_SECONDS
    max_request_audio_seconds: float = REWARD_MAX_REQUEST_AUDIO_SECONDS


class RequestError(Exception):
    """The whole request is unusable: HTTP ``status`` with ``message`` naming the field;
    ``retry_after`` (seconds) when trying again later can succeed (503)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class ItemError:
    id: Any
    error: str


@dataclass
class RequestItems:
    """The JSON items of an admitted request and the seconds of audio they carry."""

    raw: list[Any]
    audio_seconds: float


def parse_request(body: bytes, limits: Limits, schema: LabelSchema) -> list[ScoreInput | ItemError]:
    """Both stages at once: scorer inputs (16 kHz float32) and per-item errors."""
    return decode_items(read_items(body, limits), schema)


def read_items(body: bytes, limits: Limits) -> RequestItems:
    """Parse the JSON and check every size limit; nothing is decoded yet."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"body: {len(body)} bytes exceed the limit of "
                                f"{limits.max_body_bytes} bytes")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"body: not valid JSON ({exc})") from None
    except RecursionError:
        raise RequestError(400, "body: JSON nested too deeply") from None
    if not isinstance(payload, dict) or "items" not in payload:
        raise RequestError(400, 'items: required (the body must be {"items": [...]})')
    items = payload["items"]
    if not isinstance(items, list):
        raise RequestError(400, f"items: expected a list, got {type(items).__name__}")
    if len(items) > limits.max_items:
        raise RequestError(413, f"items: {len(items)} items exceed the limit of "
                                f"{limits.max_items} per request")
    total = sum(_item_seconds(i, raw, limits) for i, raw in enumerate(items))
    if total > limits.max_request_audio_seconds:
        raise RequestError(413, f"items: {total:.1f} s of audio in all exceed the limit of "
                                f"{limits.max_request_audio_seconds:g} s per request")
    return RequestItems(items, total)


def _item_seconds(index: int, raw: object, limits: Limits) -> float:
    """Seconds of audio in one item (sample and reference), from the base64 lengths alone;
    malformed audio counts 0 here and becomes an item error when decoded."""
    if not isinstance(raw, dict):
        return 0.0
    total = 0.0
    where = f"items[{index}]"
    reference = raw.get("reference")
    for path, audio in ((f"{where}.audio", raw.get("audio")),
                        (f"{where}.reference.audio",
                         reference.get("audio") if isinstance(reference, dict) else None)):
        if not isinstance(audio, dict) or not isinstance(data := audio.get("pcm16"), str):
            continue
        rate = audio.get("sampleRate", SAMPLE_RATE)
        if not _valid_rate(rate):
            continue
        if (secs := pcm16_seconds(data, rate)) > limits.max_audio_seconds:
            raise RequestError(413, f"{path}: {secs:.1f} s of audio exceed the limit of "
                                    f"{limits.max_audio_seconds:g} s per item")
        total += secs
    return total


def decode_items(request: RequestItems, schema: LabelSchema) -> list[ScoreInput | ItemError]:
    """Decode an admitted request's items into scorer inputs and per-item errors."""
    return [parse_item(i, raw, schema) for i, raw in enumerate(request.raw)]


def parse_item(index: int, raw: object, schema: LabelSchema) -> ScoreInput | ItemError:
    """One item (its audio length already checked by ``read_items``)."""
    where = f"items[{index}]"
    if not isinstance(raw, dict):
        return ItemError(None, f"{where}: expected an object, got {type(raw).__name__}")
    item_id = raw.get("id")
    if not isinstance(item_id, str) or not item_id:
        return ItemError(None, f"{where}.id: required, a non-empty string")
    try:
        audio = _audio(raw.get("audio"), f"{where}.audio")
        reference = None
        if raw.get("reference") is not None:
            ref = raw["reference"]
            if not isinstance(ref, dict):
                raise _FieldError(f"{where}.reference: expected an object with 'audio'")
            reference = _audio(ref.get("audio"), f"{where}.reference.audio")
        text = raw.get("text", "")
        if not isinstance(text, str):
            raise _FieldError(f"{where}.text: expected a string, got {type(text).__name__}")
        labels = _labels(raw.get("labels") or {}, f"{where}.labels", schema)
    except _FieldError as exc:
        return ItemError(item_id, str(exc))
    return ScoreInput(id=item_id, audio=audio, text=text, labels=labels, reference=reference)


class _FieldError(Exception):
    pass


def _audio(raw: object, where: str) -> np.ndarray:
    if not isinstance(raw, dict):
        raise _FieldError(f"{where}: required, an object with sampleRate and pcm16")
    rate = raw.get("sampleRate", SAMPLE_RATE)
    if not _valid_rate(rate):
        raise _FieldError(f"{where}.sampleRate: expected an integer from {MIN_SAMPLE_RATE} to "
                          f"{MAX_SAMPLE_RATE} Hz, got {_short.repr(rate)}")
    data = raw.get("pcm16")
    try:
        audio = resample(decode_pcm16(data), rate, SAMPLE_RATE)
    except AudioError as exc:
        raise _FieldError(f"{where}.pcm16: {exc}") from None
    if len(audio) == 0:
        raise _FieldError(f"{where}.pcm16: audio is empty after resampling to {SAMPLE_RATE} Hz")
    return audio


def _valid_rate(rate: object) -> bool:
    return (isinstance(rate, int) and not isinstance(rate, bool)
            and MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE)


def _labels(raw: object, where: str, schema: LabelSchema) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _FieldError(f"{where}: expected an object, got {type(raw).__name__}")
    for dim, value in raw.items():
        if not isinstance(value, str) or len(value) > MAX_LABEL_CHARS:
            raise _FieldError(f"{where}.{dim[:40]}: expected a label (a string of at "
                              f"most {MAX_LABEL_CHARS} characters), got {_short.repr(value)}")
    if errors := schema.label_errors(raw):
        raise _FieldError("; ".join(f"{where}.{e}" for e in errors))
    return {dim: schema.canonical(dim, value) or value for dim, value in raw.items()}
