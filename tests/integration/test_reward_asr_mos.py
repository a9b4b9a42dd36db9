"""asr (real faster-whisper tiny.en) and mos (real DNSMOS) servers on espeak-ng speech."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest

from rlaif.config import RewardEndpoint
from rlaif.reward_client import RewardClient, ScoreItem
from rlaif.rewards.server import ServerSettings
from rlaif.rewards.text import normalize_text
from tests.integration.reward_support import SENTENCE, running_server, speak

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    asr = ServerSettings(kind="asr", model="builtin:whisper-tiny.en", max_batch=8)
    mos = ServerSettings(kind="mos", model="builtin:dnsmos", max_batch=8)
    with running_server(asr) as a, running_server(mos) as m, RewardClient(
            [RewardEndpoint(name="asr", url=a.url, weight=0.5),
             RewardEndpoint(name="mos", url=m.url, weight=0.5)]) as c:
        yield c


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return speak(SENTENCE, rate=140)


def test_asr_scores_clear_speech_above_damaged_or_mismatched(client, clean) -> None:
    noise = np.random.default_rng(0).normal(0, 0.5, len(clean)).astype(np.float32)
    variants = {
        "clean": (clean, SENTENCE),
        "noisy": (np.clip(clean + noise, -1, 1), SENTENCE),
        "reversed": (clean[::-1].copy(), SENTENCE),
        "wrong-text": (clean, "Please close the window before you leave the room."),
    }
    scores = client.score([ScoreItem(id=k, audio=a, text=t) for k, (a, t) in variants.items()])
    asr = dict(zip(scores.ids, scores.per_reward["asr"], strict=True))
    assert asr["clean"] > 0.8
    for bad in ("noisy", "reversed", "wrong-text"):
        assert asr["clean"] > asr[bad] + 0.5, (bad, asr)
    for (_, text), details in zip(variants.values(), scores.details["asr"], strict=True):
        ref, hyp = normalize_text(text), normalize_text(details["transcript"])
        assert details["reference"] == text  # the raw texts, and what WER compared
        assert (details["normalizedReference"], details["normalizedTranscript"]) == (ref, hyp)
        assert details["wer"] == pytest.approx(jiwer.wer(ref, hyp))
        assert details["cer"] == pytest.approx(jiwer.cer(ref, hyp))


def test_asr_needs_the_text(client, clean) -> None:
    scores = client.score([ScoreItem(id="x", audio=clean, text="  ")])
    assert scores.errors["asr"] == 1 and "items[0].text: required" in scores.details["asr"][0][
        "error"]
    assert scores.errors["mos"] == 0


def test_mos_prefers_clean_speech_to_noise_and_clipping(client, clean) -> None:
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 0.3, len(clean)), -1, 1)
    clipped = np.clip(clean * 20, -1, 1)
    scores = client.score([ScoreItem(id=k, audio=a.astype(np.float32), text=SENTENCE)
                           for k, a in (("clean", clean), ("noisy", noisy), ("clipped", clipped))])
    mos = scores.per_reward["mos"]
    assert mos[0] > mos[1] + 0.2 and mos[0] > mos[2]
    details = scores.details["mos"][0]
    assert set(details) == {"ovrl", "sig", "bak", "p808"}
    assert mos[0] == pytest.approx((details["ovrl"] - 1) / 4)


def test_mos_matches_speechmos_on_clips_longer_than_a_window(client, clean) -> None:
    from speechmos import dnsmos

    long = np.concatenate([clean] * 4)  # > 9.01 s: no tiling, the same windows as speechmos
    (details,) = client.score([ScoreItem(id="long", audio=long, text=SENTENCE)]).details["mos"]
    ref = dnsmos.run(np.round(long * 32767) / 32767, 16000)
    assert details["ovrl"] == pytest.approx(ref["ovrl_mos"], abs=0.05)
    assert details["p808"] == pytest.approx(ref["p808_mos"], abs=0.05)
