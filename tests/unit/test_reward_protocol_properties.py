"""Property tests of the request parser: whatever the bytes, a clear 4xx or bounded work.

Generated bodies include deep nesting, huge numbers, wrong types, low sample rates and audio
near the limits; ``read_items`` must refuse or admit them without decoding, and what it
admits must decode to no more audio than the limits allow.
"""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from rlaif.api.labels import LabelSchema
from rlaif.constants import SAMPLE_RATE
from rlaif.rewards.protocol import (
    ItemError,
    Limits,
    RequestError,
    RequestItems,
    decode_items,
    read_items,
)
from rlaif.rewards.scoring import ScoreInput

LIMITS = Limits(max_items=6, max_body_bytes=200_000, max_audio_seconds=2.0,
                max_request_audio_seconds=5.0)
SCHEMA = LabelSchema()

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30)
           | st.floats() | st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["id", "audio", "pcm16", "sampleRate", "labels", "emotion", "reference"]),
    inner, max_size=4), max_leaves=12)
rates = st.sampled_from([8000, 16000, 22050, 44100]) | st.integers(-5, 400_000) | scalars
audio = st.fixed_dictionaries({"sampleRate": rates, "pcm16": st.integers(0, 40_000).map(
    lambda n: base64.b64encode(bytes(n)).decode()) | st.text(max_size=8) | scalars})
items = st.fixed_dictionaries({"id": st.text(max_size=4) | scalars, "audio": audio | json_values},
                              optional={"reference": st.fixed_dictionaries({"audio": audio}),
                                        "labels": json_values, "text": scalars})


def nested(depth: int) -> bytes:
    return b'{"items": ' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    st.binary(max_size=100),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(items, max_size=8).map(lambda v: json.dumps({"items": v}).encode()),
    st.integers(1, 100_000).map(nested),
    st.integers(1, 5_000).map(lambda n: b'{"items": [' + b"9" * n + b"]}"),
)


@settings(max_examples=300, deadline=None, database=None)
@given(body=bodies)
def test_any_body_is_refused_cleanly_or_decodes_within_the_limits(body: bytes) -> None:
    try:
        admitted = read_items(body, LIMITS)
    except RequestError as exc:
        assert exc.status in (400, 413)
        assert exc.message.split(":")[0] in ("body", "items") or exc.message.startswith("items[")
        assert len(exc.message) < 300
        return
    assert isinstance(admitted, RequestItems)
    assert admitted.audio_seconds <= LIMITS.max_request_audio_seconds
    decoded = decode_items(admitted, SCHEMA)
    assert len(decoded) == len(admitted.raw)
    total = 0.0
    for i, entry in enumerate(decoded):
        if isinstance(entry, ItemError):
            assert entry.error.startswith(f"items[{i}]") and len(entry.error) < 500
            continue
        assert isinstance(entry, ScoreInput)
        seconds = [entry.seconds] + ([] if entry.reference is None
                                     else [len(entry.reference) / SAMPLE_RATE])
        assert all(0 < s <= LIMITS.max_audio_seconds + 0.01 for s in seconds)
        total += sum(seconds)
    assert total <= admitted.audio_seconds + 0.01 * len(decoded)
