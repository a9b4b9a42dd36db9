"""The served judge (``judge.backend: openai``) against a local stand-in for vLLM.

vLLM serving Qwen2-Audio cannot run here, so the server below stands in for its
``/v1/chat/completions``: a real HTTP server on loopback that records every request (checked
by the tests: model, input_audio WAV, the text read, the JSON schema) and answers from a
script: labels, 503s, 429s with Retry-After, unusable text; it also counts requests in
flight. Everything else (the HTTP client, retries, concurrency limit, parser, scoring, the
reward server and the trainer's reward client) is the real code.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from rlaif.api.labels import LabelSchema
from rlaif.api.models import JudgeSpec
from rlaif.audio import PCM16_SCALE
from rlaif.config import RewardEndpoint
from rlaif.constants import JUDGE_API_KEY_ENV, SAMPLE_RATE
from rlaif.reward_client import RewardClient, ScoreItem
from rlaif.rewards.judge_openai import ServedJudge
from rlaif.rewards.scoring import ScoreInput
from rlaif.rewards.server import ServerSettings
from tests.integration.reward_support import free_port, running_server
from tests.integration.test_labeling_endpoint import serve

SCHEMA = LabelSchema()
MODEL = "Qwen/Qwen2-Audio-7B-Instruct"
HEARD = ["emotion", "speechRate", "intonation"]
TARGETS = {"structure": "Statement", "emotion": "Neutral", "speechRate": "Medium Slow",
           "intonation": "Declarative"}
READING = "The speaker was reading: "


@dataclass
class Seen:
    body: dict[str, Any]
    authorization: str | None
    time: float

    @property
    def parts(self) -> dict[str, Any]:
        """The user message's parts by type (input_audio, text)."""
        return {p["type"]: p for p in self.body["messages"][0]["content"]}

    @property
    def text_read(self) -> str:
        prompt = self.parts["text"]["text"]
        return json.loads(prompt.split(READING, 1)[1].split("\n", 1)[0])


@dataclass
class StandInVllm:
    """vLLM's chat completions, scripted: ``errors`` are answered first, in order (status,
    Retry-After), then every request gets ``answer(text read)``. A request is held until
    more than ``limit`` are in flight or ``hold_s`` passed, so a client over the limit is
    seen over it."""

    answer: Callable[[str], str] = lambda text: json.dumps(TARGETS)
    errors: list[tuple[int, str | None]] = field(default_factory=list)
    limit: int | None = None
    hold_s: float = 1.0
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(await request.json(), request.headers.get("Authorization"),
                              time.monotonic()))
        if self.errors:
            status, retry_after = self.errors.pop(0)
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            return web.json_response({"error": {"message": "scripted"}}, status=status,
                                     headers=headers)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.limit is not None:
                deadline = time.monotonic() + self.hold_s
                while self.peak <= self.limit and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            content = self.answer(self.seen[-1].text_read)
        finally:
            self.in_flight -= 1
        return web.json_response({"id": "x", "object": "chat.completion", "model": MODEL,
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": content}}]})


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def items(*texts: str) -> list[ScoreInput]:
    return [ScoreInput(f"s{i}", tone(0.5 + 0.25 * i), text=text, labels=dict(TARGETS))
            for i, text in enumerate(texts)]


def judge(url: str, api_key: str | None = None, **settings: Any) -> ServedJudge:
    spec = JudgeSpec.model_validate({"backend": "openai", "endpoint": url, **settings})
    return ServedJudge(MODEL, spec, SCHEMA, api_key)


def test_request_shape_and_scores() -> None:
    answers = {"first": json.dumps(TARGETS),
               "second": json.dumps({**TARGETS, "emotion": "Angry", "speechRate": "Slow"})}
    stand_in = StandInVllm(answer=answers.__getitem__)
    batch = items("first", "second")
    with serve(stand_in) as url:
        results = judge(url, "sk-test", dimensions=HEARD).score_batch(batch)
    assert [r.error for r in results] == [None, None]
    assert [r.score for r in results] == [pytest.approx(1.0), pytest.approx(1 / 3)]
    assert sorted(s.text_read for s in stand_in.seen) == ["first", "second"]
    for seen in stand_in.seen:
        body, sent = seen.body, batch[0] if seen.text_read == "first" else batch[1]
        assert (body["model"], body["temperature"], seen.authorization) == (
            MODEL, 0, "Bearer sk-test")
        assert [m["role"] for m in body["messages"]] == ["user"]
        audio = seen.parts["input_audio"]["input_audio"]
        assert audio["format"] == "wav"
        with wave.open(io.BytesIO(base64.b64decode(audio["data"], validate=True))) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (
                SAMPLE_RATE, 1, 2)
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        np.testing.assert_array_equal(pcm, np.round(sent.audio * PCM16_SCALE).astype("<i2"))
        prompt = seen.parts["text"]["text"]
        assert "Statement" not in prompt and '"structure"' not in prompt
        assert json.dumps({dim: SCHEMA.values(dim)[0] for dim in HEARD}) not in prompt
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema"
        schema = fmt["json_schema"]["schema"]
        assert schema["required"] == HEARD
        assert {d: p["enum"] for d, p in schema["properties"].items()} == {
            d: SCHEMA.values(d) for d in HEARD}


def test_json_schema_can_be_turned_off() -> None:
    stand_in = StandInVllm()
    with serve(stand_in) as url:
        [result] = judge(url, json_schema=False).score_batch(items("plain"))
    assert result.score == 1.0
    assert "response_format" not in stand_in.seen[0].body
    assert stand_in.seen[0].authorization is None


def test_429_and_503_are_retried_and_retry_after_is_honoured() -> None:
    stand_in = StandInVllm(errors=[(429, "1"), (503, None)])
    with serve(stand_in) as url:
        [result] = judge(url, retries=2).score_batch(items("again"))
    assert result.error is None and result.score == 1.0
    assert len(stand_in.seen) == 3
    assert stand_in.seen[1].time - stand_in.seen[0].time >= 0.95  # Retry-After: 1


def test_concurrency_limit_is_honoured() -> None:
    stand_in = StandInVllm(limit=2)
    with serve(stand_in) as url:
        results = judge(url, concurrency=2).score_batch(items(*"abcdef"))
    assert [r.score for r in results] == [1.0] * 6
    assert stand_in.peak == 2


def test_unusable_answer_is_an_item_error_and_the_others_are_scored() -> None:
    stand_in = StandInVllm(answer=lambda text: "I cannot tell." if text == "bad"
                           else json.dumps(TARGETS))
    with serve(stand_in) as url:
        good, bad = judge(url).score_batch(items("good", "bad"))
    assert good.score == 1.0 and good.error is None
    assert bad.error is not None and bad.error.startswith(
        "judge answer unusable (no label values found")
    assert "I cannot tell." in bad.error


def test_an_endpoint_that_keeps_failing_gives_item_errors() -> None:
    stand_in = StandInVllm(errors=[(503, "0")] * 4)
    with serve(stand_in) as url:
        results = judge(url, retries=1).score_batch(items("a", "b"))
    assert len(stand_in.seen) == 4
    for result in results:
        assert result.error is not None and "HTTP 503" in result.error
        assert "after 2 attempts" in result.error
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    [refused] = judge(closed, retries=0).score_batch(items("c"))
    assert refused.error is not None and refused.error.startswith("judge endpoint: ")


def test_through_the_reward_server_and_client(monkeypatch) -> None:
    monkeypatch.setenv(JUDGE_API_KEY_ENV, "sk-server")
    stand_in = StandInVllm(answer=lambda text: json.dumps(
        {**TARGETS, "intonation": "Interrogative"}))
    with serve(stand_in) as url:
        spec = JudgeSpec(backend="openai", endpoint=url, dimensions=HEARD)
        settings = ServerSettings(kind="judge", model=MODEL, judge=spec, max_batch=4)
        with running_server(settings) as server, RewardClient(
                [RewardEndpoint(name="alignment", url=server.url, weight=1.0)]) as client:
            scores = client.score([
                ScoreItem(id="a", audio=tone(1.0), text="Is it?", labels=TARGETS),
                ScoreItem(id="b", audio=tone(1.0), text="No labels.")])
    assert scores.errors == {"alignment": 1}
    assert scores.per_reward["alignment"][0] == pytest.approx(2 / 3)
    assert "items[1].labels: the judge needs target labels" in \
        scores.details["alignment"][1]["error"]
    assert [s.authorization for s in stand_in.seen] == ["Bearer sk-server"]
    assert stand_in.seen[0].text_read == "Is it?"
