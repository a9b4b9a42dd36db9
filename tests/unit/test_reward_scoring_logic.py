"""Pure parts of the reward servers: text normalisation, judge answer parsing, the acoustic
judge's label mapping, request validation and the micro-batcher."""

from __future__ import annotations

import asyncio
import base64
import json

import jiwer
import numpy as np
import pytest

from rlaif.api.labels import DIMENSIONS, LabelSchema
from rlaif.audio import encode_pcm16
from rlaif.rewards.acoustic import count_syllables, is_rising, rate_score
from rlaif.rewards.batcher import MicroBatcher
from rlaif.rewards.judge import alignment, judge_prompt, parse_judgement, score_answer
from rlaif.rewards.protocol import ItemError, Limits, RequestError, parse_request
from rlaif.rewards.scoring import ScoreInput, ScoreResult
from rlaif.rewards.text import normalize_text

SCHEMA = LabelSchema()


@pytest.mark.parametrize(("reference", "transcript"), [
    ("the 21st century", "the twenty first century"),  # ordinals
    ("She finished second.", "she finished 2nd"),
    ("Twenty-one apples, please!", "21 apples please"),  # numbers
    ("one hundred and one dalmatians", "101 Dalmatians"),
    ("It costs five dollars.", "It costs $5."),
    ("OK, colour.", "Okay, color."),  # British/American spelling and variants
    ("We are organising the centre.", "we are organizing the center"),
    ("I can't come, we're late.", "I cannot come, we are late"),  # contractions
    ("Don't STOP", "do not stop"),
    ("Mr. Smith arrived.", "Mister Smith arrived"),
    ("HELLO, World!", "hello world"),  # casing and punctuation
    ("Wait -- what? (Really.)", "wait what"),
    ("Um, the door is open.", "the door is open"),  # fillers
    ("I see...", "I see."),  # an ellipsis leaves no stray "." word
])
def test_wer_ignores_how_the_same_words_are_written(reference: str, transcript: str) -> None:
    ref, hyp = normalize_text(reference), normalize_text(transcript)
    assert ref and jiwer.wer(ref, hyp) == 0.0, (ref, hyp)


@pytest.mark.parametrize(("reference", "transcript", "wer"), [
    ("the 21st century", "the twenty second century", 1 / 3),
    ("She finished second.", "she finished third", 1 / 3),
    ("one hundred and one dalmatians", "one hundred and two dalmatians", 1 / 2),
    ("OK, colour.", "Okay, collar.", 1 / 2),
    ("I can come.", "I can't come.", 1 / 3),  # "can not": one word inserted
    ("Close the door.", "Open the door.", 1 / 3),
    ("It costs five dollars.", "It costs five pounds.", 1 / 3),
])
def test_wer_counts_words_that_really_differ(reference: str, transcript: str,
                                             wer: float) -> None:
    assert jiwer.wer(normalize_text(reference), normalize_text(transcript)) == pytest.approx(wer)


@pytest.mark.parametrize("text", ["  ", "?!", "Hmm, um..."])
def test_text_with_no_words_normalises_to_nothing(text: str) -> None:
    assert normalize_text(text) == ""  # the asr scorer's check rejects such an item


def test_judge_prompt_lists_every_allowed_value() -> None:
    prompt = judge_prompt(SCHEMA)
    for dim in ("structure", "emotion", "speechRate", "intonation"):
        assert all(v in prompt for v in SCHEMA.values(dim))
    assert '"speechRate"' in prompt  # the schema's keys, the same the labeller answers with


def test_parse_well_formed_json_answer() -> None:
    answer = ('Sure. {"Structure": "question", "Emotion": "Neutral", '
              '"Speech Speed": "medium  fast", "Tone": "Interrogative"}')
    predicted, problem = parse_judgement(answer, SCHEMA)
    assert problem is None
    assert predicted == {"structure": "Question", "emotion": "Neutral",
                         "speechRate": "Medium Fast", "intonation": "Interrogative"}
    targets = {"structure": "Question", "emotion": "Angry", "speechRate": "Medium Fast",
               "intonation": "Interrogative"}
    matched = alignment(targets, predicted)
    assert sum(matched.values()) / len(matched) == 0.75


def test_parse_partial_and_numbered_line_answers() -> None:
    predicted, problem = parse_judgement("1. Structure: Statement\n2. Emotion: Sleepy\n", SCHEMA)
    assert problem is None
    assert predicted["structure"] == "Statement"
    assert predicted["emotion"] is None  # off-list value counts as a miss
    assert predicted["speechRate"] is None and predicted["intonation"] is None


@pytest.mark.parametrize("answer", ["", "I cannot tell.", "{not json}", '{"Mood": "Happy"}',
                                    "\x00\x13 Ex Ex", '{"Emotion": 3}'])
def test_garbage_answers_give_no_labels_and_a_reason(answer: str) -> None:
    predicted, problem = parse_judgement(answer, SCHEMA)
    assert problem is not None and "no label values" in problem
    assert set(predicted.values()) == {None}
    assert alignment({"emotion": "Neutral"}, predicted) == {"emotion": 0.0}


def test_an_unusable_judge_answer_is_an_item_error_not_a_zero() -> None:
    item = ScoreInput("s1", np.zeros(1600, np.float32), labels={"emotion": "Neutral",
                                                                "intonation": "Declarative"})
    failed = score_answer(item, "I cannot tell.", SCHEMA, DIMENSIONS)
    assert failed.error is not None and "judge answer unusable" in failed.error
    assert "no label values" in failed.error and "I cannot tell." in failed.error
    scored = score_answer(item, '{"Emotion": "Neutral", "Tone": "Interrogative"}', SCHEMA,
                          DIMENSIONS)
    assert scored.error is None and scored.score == 0.5  # a wrong label is still a score


def test_rate_score_prefers_the_target_class() -> None:
    classes = len(SCHEMA.speech_rate)
    slow, fast = 2.8, 6.5  # centres of the slowest and fastest classes (syllables/s)
    assert rate_score(slow, 0, classes) == 1.0 and rate_score(fast, classes - 1, classes) == 1.0
    assert rate_score(slow, classes - 1, classes) == 0.0
    middle = [rate_score(4.3, k, classes) for k in range(classes)]
    assert middle.index(max(middle)) == 2


def test_label_mapping_helpers() -> None:
    assert count_syllables("The committee approved the new budget after a long debate.") == 16
    assert count_syllables("") == 0
    assert is_rising("Interrogative") and is_rising("Rhetorical Question")
    assert not is_rising("Declarative") and not is_rising("Exclamation")


def _body(items: object) -> bytes:
    return json.dumps({"items": items}).encode()


def _audio(n: int = 160, rate: int = 16000) -> dict:
    return {"sampleRate": rate, "pcm16": encode_pcm16(np.zeros(n, np.float32) + 0.1)}


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{nope", 400, "body: not valid JSON"),
    (b"\xff\xfe", 400, "body: not valid JSON"),
    (b"[]", 400, "items: required"),
    (b'{"items": 3}', 400, "items: expected a list, got int"),
    (_body([{}] * 65), 413, "items: 65 items exceed the limit of 64"),
    (b"x" * 101, 413, "body: 101 bytes exceed the limit of 100"),
    (_body([{"id": "a", "audio": _audio(16000 * 3)}]), 413,
     "items[0].audio: 3.0 s of audio exceed the limit of 2 s"),
])
def test_request_level_errors(body: bytes, status: int, message: str) -> None:
    limits = Limits(max_body_bytes=100 if body.startswith(b"x") else 1 << 20,
                    max_audio_seconds=2)
    with pytest.raises(RequestError) as err:
        parse_request(body, limits, SCHEMA)
    assert err.value.status == status and message in err.value.message


def test_item_level_errors_stay_in_place() -> None:
    odd = base64.b64encode(b"abc").decode()
    items = [
        {"id": "ok", "audio": _audio(), "labels": {"emotion": "neutral"}},
        "nope",
        {"audio": _audio()},
        {"id": "b", "audio": {"sampleRate": 16000, "pcm16": "@@@"}},
        {"id": "c", "audio": {"sampleRate": 16000, "pcm16": odd}},
        {"id": "d", "audio": {"sampleRate": 16000, "pcm16": ""}},
        {"id": "e", "audio": {"sampleRate": float("nan"), "pcm16": odd}},
        {"id": "f", "audio": _audio(), "labels": {"emotion": "Sleepy"}},
        {"id": "g", "audio": _audio(), "reference": {"audio": {"pcm16": 5}}},
        {"id": "h"},
        {"id": "i", "audio": _audio(441, 44100), "text": 5},
    ]
    out = parse_request(_body(items), Limits(), SCHEMA)
    assert isinstance(out[0], ScoreInput) and out[0].labels == {"emotion": "Neutral"}
    errors = [(e.id, e.error) for e in out[1:] if isinstance(e, ItemError)]
    assert len(errors) == len(items) - 1
    expected = ["items[1]: expected an object", "items[2].id: required",
                "items[3].audio.pcm16: not valid base64", "items[4].audio.pcm16: odd byte count",
                "items[5].audio.pcm16: audio is empty", "items[6].audio.sampleRate: expected an "
                "integer", "items[7].labels.emotion: 'Sleepy' is not one of",
                "items[8].reference.audio.pcm16: expected a base64 string",
                "items[9].audio: required", "items[10].text: expected a string"]
    for (_, error), want in zip(errors, expected, strict=True):
        assert error.startswith(want), (error, want)
    assert [e[0] for e in errors][2:4] == ["b", "c"]


def test_resamples_other_rates_to_16k() -> None:
    item = {"id": "a", "audio": {"sampleRate": 44100,
                                 "pcm16": encode_pcm16(np.zeros(44100, np.float32))}}
    (parsed,) = parse_request(_body([item]), Limits(), SCHEMA)
    assert isinstance(parsed, ScoreInput) and len(parsed.audio) == 16000


async def test_micro_batcher_batches_concurrent_callers_and_keeps_order() -> None:
    batches: list[int] = []

    def score(items: list[ScoreInput]) -> list[ScoreResult]:
        if any(i.id == "boom" for i in items):
            raise RuntimeError("bad item")
        return [ScoreResult(score=float(len(i.audio))) for i in items]

    batcher = MicroBatcher(score, max_batch=8, max_wait_ms=50,
                           on_batch=lambda n, s: batches.append(n))
    batcher.start()
    try:
        def call(k: int, n: int) -> asyncio.Future:
            return asyncio.ensure_future(batcher.score(
                [ScoreInput(f"{k}-{i}", np.zeros(k * 10 + i, np.float32)) for i in range(n)]))
        results = await asyncio.gather(*(call(k, 3) for k in range(4)))
        for k, res in enumerate(results):
            assert [r.score for r in res] == [k * 10 + i for i in range(3)]
        assert max(batches) > 3  # items of several callers shared a model call
        assert max(batches) <= 8
        mixed = await batcher.score([ScoreInput("fine", np.zeros(5, np.float32)),
                                     ScoreInput("boom", np.zeros(1, np.float32))])
        assert mixed[0].score == 5 and mixed[0].error is None
        assert mixed[1].error is not None and "bad item" in mixed[1].error
    finally:
        await batcher.stop()


def test_label_schema_file_and_cli_settings(tmp_path) -> None:
    import yaml

    from rlaif.cli import build_parser
    from rlaif.rewards.server import settings_from_args

    good = tmp_path / "schema.yaml"
    good.write_text(yaml.safe_dump(LabelSchema(emotion=["Calm", "Excited"]).model_dump(
        by_alias=True)))
    args = build_parser().parse_args(["reward", "serve", "--kind", "judge", "--model",
                                      "builtin:acoustic", "--label-schema", str(good)])
    settings = settings_from_args(args)
    assert settings.schema.emotion == ["Calm", "Excited"] and settings.max_batch == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text("emotion: 3\n")
    args.label_schema = str(bad)
    with pytest.raises(ValueError, match=r"bad.yaml: emotion: must be a valid list"):
        settings_from_args(args)
    args.label_schema, args.max_batch = None, 0
    with pytest.raises(ValueError, match="--max-batch must be at least 1"):
        settings_from_args(args)
