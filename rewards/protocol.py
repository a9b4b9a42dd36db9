"""The ``POST /v1/score`` request: parsing and validation, kept apart from HTTP.

Problems with the request as a whole raise RequestError (400/413); problems with one item
become an ItemError in that item's place, so the other items are still scored. Every
message names the field (``items[3].audio.pcm16: odd byte count 3 ...``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlaif.api.labels import LabelSchema
from rlaif.audio import AudioError, decode_pcm16, pcm16_seconds, resample
from rlaif.constants import (
    REWARD_MAX_AUDIO_SECONDS,
    REWARD_MAX_BODY_BYTES,
    REWARD_MAX_ITEMS,
    SAMPLE_RATE,
)
from rlaif.rewards.scoring import ScoreInput

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000


@dataclass(frozen=True)
class Limits:
    """Per-request bounds; past them the request is refused with 413."""

    max_items: int = REWARD_MAX_ITEMS
    max_body_bytes: int = REWARD_MAX_BODY_BYTES
    max_audio_seconds: float = REWARD_MAX_AUDIO_SECONDS


class RequestError(Exception):
    """The whole request is unusable: HTTP ``status`` with ``message`` naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ItemError:
    id: Any
    error: str


def parse_request(body: bytes, limits: Limits, schema: LabelSchema) -> list[ScoreInput | ItemError]:
    """Decode a request body into scorer inputs (16 kHz float32) and per-item errors."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"body: {len(body)} bytes exceed the limit of "
                                f"{limits.max_body_bytes} bytes")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"body: not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or "items" not in payload:
        raise RequestError(400, 'items: required (the body must be {"items": [...]})')
    items = payload["items"]
    if not isinstance(items, list):
        raise RequestError(400, f"items: expected a list, got {type(items).__name__}")
    if len(items) > limits.max_items:
        raise RequestError(413, f"items: {len(items)} items exceed the limit of "
                                f"{limits.max_items} per request")
    return [parse_item(i, raw, limits, schema) for i, raw in enumerate(items)]


def parse_item(index: int, raw: object, limits: Limits,
               schema: LabelSchema) -> ScoreInput | ItemError:
    """One item; raises RequestError only for audio past the length limit."""
    where = f"items[{index}]"
    if not isinstance(raw, dict):
        return ItemError(None, f"{where}: expected an object, got {type(raw).__name__}")
    item_id = raw.get("id")
    if not isinstance(item_id, str) or not item_id:
        return ItemError(None, f"{where}.id: required, a non-empty string")
    try:
        audio = _audio(raw.get("audio"), f"{where}.audio", limits)
        reference = None
        if raw.get("reference") is not None:
            ref = raw["reference"]
            if not isinstance(ref, dict):
                raise _FieldError(f"{where}.reference: expected an object with 'audio'")
            reference = _audio(ref.get("audio"), f"{where}.reference.audio", limits)
        text = raw.get("text", "")
        if not isinstance(text, str):
            raise _FieldError(f"{where}.text: expected a string, got {type(text).__name__}")
        labels = _labels(raw.get("labels") or {}, f"{where}.labels", schema)
    except _FieldError as exc:
        return ItemError(item_id, str(exc))
    return ScoreInput(id=item_id, audio=audio, text=text, labels=labels, reference=reference)


class _FieldError(Exception):
    pass


def _audio(raw: object, where: str, limits: Limits) -> np.ndarray:
    if not isinstance(raw, dict):
        raise _FieldError(f"{where}: required, an object with sampleRate and pcm16")
    rate = raw.get("sampleRate", SAMPLE_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int) or not (
            MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
        raise _FieldError(f"{where}.sampleRate: expected an integer from {MIN_SAMPLE_RATE} to "
                          f"{MAX_SAMPLE_RATE} Hz, got {rate!r}")
    data = raw.get("pcm16")
    if isinstance(data, str) and (secs := pcm16_seconds(data, rate)) > limits.max_audio_seconds:
        raise RequestError(413, f"{where}: {secs:.1f} s of audio exceed the limit of "
                                f"{limits.max_audio_seconds:g} s per item")
    try:
        audio = resample(decode_pcm16(data), rate, SAMPLE_RATE)
    except AudioError as exc:
        raise _FieldError(f"{where}.pcm16: {exc}") from None
    if len(audio) == 0:
        raise _FieldError(f"{where}.pcm16: audio is empty after resampling to {SAMPLE_RATE} Hz")
    return audio


def _labels(raw: object, where: str, schema: LabelSchema) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _FieldError(f"{where}: expected an object, got {type(raw).__name__}")
    if errors := schema.label_errors(raw):
        raise _FieldError("; ".join(f"{where}.{e}" for e in errors))
    return {dim: schema.canonical(dim, value) or value for dim, value in raw.items()}
