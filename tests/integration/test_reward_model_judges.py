"""Qwen2-Audio judge and WavLM speaker servers with tiny random models built from configs,
saved with save_pretrained and loaded through the real server path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlaif.config import RewardEndpoint
from rlaif.reward_client import RewardClient, ScoreItem
from rlaif.rewards.server import ServerSettings
from tests.integration.reward_support import (
    SENTENCE,
    build_tiny_qwen2_audio,
    build_tiny_wavlm,
    running_server,
    speak,
)

LABELS = {"structure": "Statement", "emotion": "Neutral", "speechRate": "Medium Slow",
          "intonation": "Declarative"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("reward-models")
    return build_tiny_qwen2_audio(root / "qwen2-audio"), build_tiny_wavlm(root / "wavlm")


@pytest.fixture(scope="module")
def client(model_dirs):
    judge_dir, wavlm_dir = model_dirs
    judge = ServerSettings(kind="judge", model=str(judge_dir), device="cpu", max_batch=4)
    speaker = ServerSettings(kind="speaker", model=str(wavlm_dir), device="cpu", max_batch=4)
    with running_server(judge) as j, running_server(speaker) as s, RewardClient(
            [RewardEndpoint(name="alignment", url=j.url, weight=0.7),
             RewardEndpoint(name="similarity", url=s.url, weight=0.3)]) as c:
        yield c


def test_judge_and_speaker_score_through_the_server(client) -> None:
    me = speak(SENTENCE, pitch=40)
    other = speak("A different voice says something else.", pitch=90, rate=200)
    items = [ScoreItem(id="same", audio=me, text=SENTENCE, labels=LABELS, reference_audio=me),
             ScoreItem(id="other", audio=me, text=SENTENCE, labels=LABELS,
                       reference_audio=other[: len(me)])]
    scores = client.score(items)
    assert scores.errors == {"alignment": 2, "similarity": 0}
    # A random tiny LLM answers garbage: an item error quoting the answer (NaN for the
    # client, so the sample is left out rather than scored 0), no crash.
    for details in scores.details["alignment"]:
        assert details["error"].startswith("judge answer unusable (no label values found")
    assert np.isnan(scores.per_reward["alignment"]).all() and np.isnan(scores.total).all()
    sim = scores.per_reward["similarity"]
    assert sim[0] == pytest.approx(1.0, abs=1e-4)  # identical audio: cosine 1
    assert scores.details["similarity"][1]["cosine"] < scores.details["similarity"][0]["cosine"]


def test_missing_reference_and_labels_are_item_errors(client) -> None:
    audio = speak("Short.")
    scores = client.score([ScoreItem(id="bare", audio=audio)])
    assert scores.errors == {"alignment": 1, "similarity": 1}
    assert "items[0].labels" in scores.details["alignment"][0]["error"]
    assert "items[0].reference.audio: required" in scores.details["similarity"][0]["error"]
