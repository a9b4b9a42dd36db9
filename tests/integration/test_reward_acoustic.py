"""The acoustic judge on real espeak-ng speech: speaking rate, intonation, arousal."""

from __future__ import annotations

import pytest

from rlaif.api.labels import LabelSchema
from rlaif.rewards.acoustic import AcousticJudge
from rlaif.rewards.scoring import ScoreInput, prepare
from tests.integration.reward_support import SENTENCE, speak


@pytest.fixture(scope="module")
def judge() -> AcousticJudge:
    judge = AcousticJudge(LabelSchema())
    prepare(judge)
    return judge


def score(judge: AcousticJudge, audio, text: str, **labels: str) -> float:
    return judge.score_one(ScoreInput("x", audio, text, labels)).score


@pytest.mark.parametrize(("slow_label", "slow_wpm", "fast_label", "fast_wpm"), [
    ("Extremely Slow", 80, "Extremely Fast", 250), ("Slow", 110, "Medium Fast", 170)])
def test_speech_rate_labels_follow_the_espeak_rate(judge, slow_label, slow_wpm, fast_label,
                                                   fast_wpm) -> None:
    slow, fast = speak(SENTENCE, rate=slow_wpm), speak(SENTENCE, rate=fast_wpm)
    assert score(judge, slow, SENTENCE, speechRate=slow_label) > score(
        judge, fast, SENTENCE, speechRate=slow_label) + 0.5
    assert score(judge, fast, SENTENCE, speechRate=fast_label) > score(
        judge, slow, SENTENCE, speechRate=fast_label) + 0.5


def test_speech_rate_without_text_uses_onsets(judge) -> None:
    slow, fast = speak(SENTENCE, rate=90), speak(SENTENCE, rate=250)
    details = [judge.score_one(ScoreInput("x", a, "", {"speechRate": "Slow"})).details
               for a in (slow, fast)]
    assert details[1]["syllablesPerSecond"] > 1.5 * details[0]["syllablesPerSecond"]


def test_question_rises_and_statement_falls(judge) -> None:
    question_text = "Is this the right way to the station?"
    statement_text = "This is the right way to the station."
    question, statement = speak(question_text), speak(statement_text)
    assert score(judge, question, question_text, intonation="Interrogative") > 0.7
    assert score(judge, statement, statement_text, intonation="Interrogative") < 0.3
    assert score(judge, statement, statement_text, intonation="Declarative") > 0.7
    assert score(judge, question, question_text, intonation="Declarative") < 0.3


def test_wide_pitch_range_reads_as_high_arousal(judge) -> None:
    text = "This is wonderful news, I am so happy!"
    lively = speak(f'<speak><prosody pitch="+20%" range="x-high">{text}</prosody></speak>',
                   ssml=True)
    flat = speak(f'<speak><prosody range="x-low">{text}</prosody></speak>', ssml=True)
    assert score(judge, lively, text, emotion="Excited") > score(judge, flat, text,
                                                                 emotion="Excited")
    assert score(judge, flat, text, emotion="Neutral") > score(judge, lively, text,
                                                               emotion="Neutral")


def test_noise_without_voice_scores_low_and_keeps_details(judge) -> None:
    import numpy as np

    noise = np.random.default_rng(0).normal(0, 0.3, 16000).astype(np.float32)
    result = judge.score_one(ScoreInput("n", noise, SENTENCE, {"intonation": "Declarative",
                                                               "emotion": "Neutral"}))
    assert result.score <= 0.5
    assert set(result.details) >= {"syllablesPerSecond", "finalSlope", "arousal"}
