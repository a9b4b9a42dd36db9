"""pcm16 wire encoding and resampling shared by the reward client and server."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rlaif.audio import AudioError, decode_pcm16, encode_pcm16, pcm16_seconds, resample
from rlaif.reward_client import RewardScores


@settings(max_examples=50, deadline=None, database=None)
@given(arrays(np.float32, st.integers(1, 2000), elements=st.floats(-1, 1, width=32)))
def test_pcm16_round_trip_is_within_one_quantisation_step(audio: np.ndarray) -> None:
    data = encode_pcm16(audio)
    back = decode_pcm16(data)
    assert back.dtype == np.float32 and back.shape == audio.shape
    assert np.max(np.abs(back - audio)) <= 0.5 / 32767 + 1e-7
    assert pcm16_seconds(data, 16000) == pytest.approx(len(audio) / 16000)


def test_encode_clips_out_of_range_and_is_little_endian() -> None:
    raw = base64.b64decode(encode_pcm16(np.array([2.0, -2.0, 0.5], dtype=np.float32)))
    assert np.frombuffer(raw, "<i2").tolist() == [32767, -32767, 16384]


def test_encode_rejects_nan_and_non_mono() -> None:
    with pytest.raises(AudioError, match="NaN"):
        encode_pcm16(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(AudioError, match="mono"):
        encode_pcm16(np.zeros((2, 2, 2), dtype=np.float32))


@pytest.mark.parametrize(("data", "message"), [
    ("not base64!", "not valid base64"),
    (base64.b64encode(b"abc").decode(), "odd byte count 3"),
    ("", "empty"),
    (123, "expected a base64 string, got int"),
])
def test_decode_rejects_bad_payloads_with_a_reason(data: object, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        decode_pcm16(data)


def test_resample_keeps_duration_and_pitch() -> None:
    sr = 22050
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, sr, 16000)
    assert out.dtype == np.float32 and len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) < 2
    np.testing.assert_array_equal(resample(tone, 16000, 16000), tone)
    with pytest.raises(AudioError, match="positive"):
        resample(tone, 0, 16000)


def test_reward_scores_concat_keeps_order_and_sums_errors() -> None:
    def part(ids: list[str], score: float, errors: int) -> RewardScores:
        n = len(ids)
        return RewardScores(ids=ids, total=np.full(n, 0.5 * score),
                            per_reward={"asr": np.full(n, score)},
                            details={"asr": [{"i": i} for i in ids]}, errors={"asr": errors})

    joined = RewardScores.concat([part(["a", "b"], 0.2, 1), part(["c"], 0.8, 2)])
    assert joined.ids == ["a", "b", "c"]
    assert joined.total.dtype == np.float64
    np.testing.assert_allclose(joined.per_reward["asr"], [0.2, 0.2, 0.8])
    assert [d["i"] for d in joined.details["asr"]] == ["a", "b", "c"]
    assert joined.errors == {"asr": 3}
    with pytest.raises(ValueError, match="at least one"):
        RewardScores.concat([])
