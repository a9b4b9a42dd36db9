"""The judge served elsewhere (``judge.backend: openai``): an OpenAI-compatible
chat-completions server, such as vLLM serving Qwen2-Audio or Qwen2.5-Omni.

Each clip is one request to ``{endpoint}/chat/completions``: a user message holding the audio
as an ``input_audio`` part (base64 WAV, 16 kHz mono) and the question of
rlaif.rewards.judge. Unless turned off, the answer is constrained with ``response_format``
``json_schema`` (one enum of label values per kept dimension), so a server with guided
decoding can only answer valid labels. A batch's requests run concurrently, at most
``concurrency`` in flight. The transport is the labeller's OpenAI client: retries with
jittered exponential backoff after a 429, a 5xx, a timeout or a connection error, the
server's Retry-After honoured (capped at the request timeout), a limit per request.

Every failure is an item error, never an exception: an endpoint that keeps failing, one that
refuses the request, an answer with no usable label. The trainer then leaves the sample out
of its group statistics instead of scoring it 0.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import wave
from typing import Any

import numpy as np

from rlaif.api.labels import LabelSchema
from rlaif.api.models import JudgeSpec
from rlaif.audio import PCM16_DTYPE, PCM16_SCALE
from rlaif.constants import SAMPLE_RATE
from rlaif.labeling.llm import (
    EndpointError,
    EndpointUnusable,
    Messages,
    OpenAIChat,
    RequestRejected,
    RetryPolicy,
)
from rlaif.rewards.judge import (
    MAX_NEW_TOKENS,
    answer_schema,
    judge_prompt,
    labels_problem,
    score_answer,
)
from rlaif.rewards.scoring import ScoreInput, ScoreResult

log = logging.getLogger(__name__)

ENDPOINT_FAILURES = (EndpointError, EndpointUnusable, RequestRejected)


def wav_base64(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """Mono float audio in [-1, 1] as a base64 16-bit PCM WAV file."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * PCM16_SCALE).astype(PCM16_DTYPE)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(PCM16_DTYPE.itemsize)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class ServedJudge:
    """The label-alignment judge behind an OpenAI-compatible endpoint."""

    def __init__(self, model: str, judge: JudgeSpec, schema: LabelSchema,
                 api_key: str | None = None):
        if judge.endpoint is None:
            raise ValueError("judge.endpoint: required for backend: openai")
        self.model, self.judge, self.schema, self.api_key = model, judge, schema, api_key
        self.dimensions = tuple(judge.dimensions)
        self.response_format: dict[str, Any] | None = None
        if judge.json_schema:
            self.response_format = {"type": "json_schema", "json_schema": {
                "name": "prosody_labels", "strict": True,
                "schema": answer_schema(schema, self.dimensions)}}

    def load(self) -> None:
        """Nothing to load here: the model is the endpoint's (its readiness is its own)."""

    def warm_up(self) -> None:
        """Nothing to warm up here; the endpoint is first contacted by the first batch."""

    def check(self, item: ScoreInput) -> str | None:
        return labels_problem(item, self.dimensions)

    def messages(self, item: ScoreInput) -> Messages:
        """One user message: the clip as input_audio, then the question."""
        return [{"role": "user", "content": [
            {"type": "input_audio",
             "input_audio": {"data": wav_base64(item.audio), "format": "wav"}},
            {"type": "text", "text": judge_prompt(self.schema, self.dimensions, item.text)}]}]

    def score_batch(self, items: list[ScoreInput]) -> list[ScoreResult]:
        # Called from the server's scoring thread, which runs no event loop of its own.
        return asyncio.run(self._score_all(items))

    async def _score_all(self, items: list[ScoreInput]) -> list[ScoreResult]:
        assert self.judge.endpoint is not None  # checked in __init__
        client = OpenAIChat(self.judge.endpoint, self.model, self.api_key,
                            timeout_s=self.judge.timeout_seconds, max_tokens=MAX_NEW_TOKENS,
                            policy=RetryPolicy(retries=self.judge.retries,
                                               max_retry_after_s=self.judge.timeout_seconds))
        slots = asyncio.Semaphore(self.judge.concurrency)
        try:
            results = await asyncio.gather(*(self._score_one(client, slots, item)
                                             for item in items))
        finally:
            await client.aclose()
        return list(results)

    async def _score_one(self, client: OpenAIChat, slots: asyncio.Semaphore,
                         item: ScoreInput) -> ScoreResult:
        async with slots:
            try:
                answer = await client.complete(self.messages(item), self.response_format)
            except ENDPOINT_FAILURES as exc:
                log.warning("judge endpoint failed for %r: %s", item.id, exc)
                return ScoreResult.failed(f"judge endpoint: {exc}")
        return score_answer(item, answer, self.schema, self.dimensions)
