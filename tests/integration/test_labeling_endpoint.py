"""`rlaif label` against a local OpenAI-compatible chat-completions server.

The server below is a stand-in for the one external API of this stage (OpenAI, vLLM or any
compatible endpoint), which cannot be reached from tests. It answers per sentence from a
script: good answers, off-list labels, malformed JSON, 429 with Retry-After, 5xx errors and
slow answers that time out. Everything else (CLI, HTTP client, retries, prompts file,
resume, the trainer's loader) is the real code.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from aiohttp import web

from rlaif.api.labels import LabelSchema
from rlaif.cli import main
from rlaif.data import load_prompts
from rlaif.labeling.labeler import MAX_FAILURE_STREAK, label_all
from rlaif.labeling.llm import EndpointUnusable, OpenAIChat, RetryPolicy
from rlaif.labeling.output import PromptsWriter, read_records

SCHEMA = LabelSchema()
GOOD = {"structure": "Statement", "emotion": "Neutral", "speechRate": "Medium Slow",
        "intonation": "Declarative"}
QUESTION = {"structure": "Question", "emotion": "Expectant", "speechRate": "Medium Fast",
            "intonation": "Interrogative"}


def good_answer(sentence: str) -> str:
    return json.dumps(QUESTION if sentence.endswith("?") else GOOD)


@dataclass
class Reply:
    """One scripted reply: an HTTP status with a body, after an optional delay."""

    content: str | None = None  # the assistant's text; None = the good answer
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: dict | None = None  # a whole response body instead of a chat completion
    body: bytes | None = None  # raw bytes instead of any JSON (hostile endpoints)


@dataclass
class Seen:
    sentence: str
    time: float
    messages: list[dict[str, str]]
    authorization: str | None
    body: dict


class StandInLLM:
    """Chat completions scripted per sentence; the last reply of a script repeats."""

    def __init__(self, script: dict[str, list[Reply]] | None = None, delay_s: float = 0.0):
        self.script, self.delay_s = script or {}, delay_s
        self.seen: list[Seen] = []

    def requests_for(self, sentence: str) -> list[Seen]:
        return [s for s in self.seen if s.sentence == sentence]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        user = body["messages"][1]["content"]
        sentence = json.loads(user.rsplit("Sentence: ", 1)[1])
        self.seen.append(Seen(sentence, time.monotonic(), body["messages"],
                              request.headers.get("Authorization"), body))
        replies = self.script.get(sentence, [Reply()])
        reply = replies[min(len(self.requests_for(sentence)), len(replies)) - 1]
        await asyncio.sleep(reply.delay_s or self.delay_s)
        if reply.body is not None:
            return web.Response(body=reply.body, content_type="application/json")
        if reply.raw is not None:
            return web.json_response(reply.raw)
        if reply.status != 200:
            return web.json_response({"error": {"message": "scripted"}}, status=reply.status,
                                     headers=reply.headers)
        content = good_answer(sentence) if reply.content is None else reply.content
        return web.json_response(
            {"id": "x", "object": "chat.completion", "model": body["model"],
             "choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": content}}]})


class StandIn(Protocol):
    async def handle(self, request: web.Request) -> web.Response: ...


@contextmanager
def serve(llm: StandIn) -> Iterator[str]:
    """Run a stand-in on loopback in a thread of its own; yields its base URL (.../v1)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", llm.handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def write_texts(path: Path, sentences: list[str]) -> Path:
    path.write_text("\n".join(sentences) + "\n")
    return path


def label(source: Path, out: Path, url: str, *extra: str) -> int:
    return main(["label", "--in", str(source), "--out", str(out), "--endpoint", url,
                 "--model", "stand-in", "--api-key-env", "RLAIF_TEST_KEY", *extra])


def run_label_all(sentences: list[str], out: Path, url: str, *, retries: int = 3,
                  concurrency: int = 4, timeout_s: float = 10.0):
    """The labeller's async core with short backoff, so retry tests stay fast."""

    async def go():
        client = OpenAIChat(url, "stand-in", None, timeout_s=timeout_s,
                            policy=RetryPolicy(retries=retries, base_delay_s=0.05))
        with PromptsWriter(out, SCHEMA) as writer:
            try:
                return await label_all(sentences, writer, client, SCHEMA, retries=retries,
                                        concurrency=concurrency)
            finally:
                await client.aclose()

    return asyncio.run(go())


def test_labels_every_sentence_and_the_trainer_loads_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("RLAIF_TEST_KEY", "sk-from-env")
    source = tmp_path / "texts.txt"
    source.write_text("The meeting starts at nine. Are you coming?\nWe need more chairs.\n"
                      "Shout it loudly!\n")
    shouted = "Shout it loudly!"
    llm = StandInLLM({shouted: [Reply(json.dumps(  # the schema's spelling is restored
        {"Structure": "exclamation/reaction", "emotion": "EXCITED",
         "Speech Speed": "extremely  fast", "tone": "exclamation"}))]})
    with serve(llm) as url:
        assert label(source, tmp_path / "out" / "prompts.jsonl", url, "--concurrency", "2") == 0

    prompts = {p.text: p.labels for p in load_prompts(tmp_path / "out" / "prompts.jsonl")}
    assert prompts == {
        "The meeting starts at nine.": GOOD, "Are you coming?": QUESTION,
        "We need more chairs.": GOOD,
        shouted: {"structure": "Exclamation/Reaction", "emotion": "Excited",
                  "speechRate": "Extremely Fast", "intonation": "Exclamation"}}
    first = llm.seen[0]
    assert {s.authorization for s in llm.seen} == {"Bearer sk-from-env"}
    assert first.body["model"] == "stand-in" and first.body["temperature"] == 0
    assert SCHEMA.describe() in first.messages[1]["content"]
    out = capsys.readouterr().out
    assert "labelled: 4, unlabelled: 0" in out
    assert [line.split() for line in out.splitlines() if line.strip().startswith("Neutral")] \
        == [["Neutral", "2", "50.0%"]]
    assert [line.split() for line in out.splitlines()
            if line.strip().startswith("Extremely Slow")] == [["Extremely", "Slow", "0", "0.0%"]]


def test_off_list_and_malformed_answers_are_retried_then_recorded_unlabelled(
        tmp_path: Path) -> None:
    fixed, off_list, malformed = "It was fine.", "She smiled at him.", "Nothing parses here."
    happy = json.dumps({**GOOD, "emotion": "Happy"})
    llm = StandInLLM({fixed: [Reply(happy), Reply()], off_list: [Reply(happy)],
                      malformed: [Reply("Structure: Statement, Emotion: Neutral")]})
    out = tmp_path / "prompts.jsonl"
    with serve(llm) as url:
        assert label(write_texts(tmp_path / "t.txt", [fixed, off_list, malformed, "Good one."]),
                     out, url, "--retries", "2") == 0

    records = {r["text"]: r for r in read_records(out, SCHEMA)}
    assert records[fixed]["labels"] == GOOD
    # The retry showed the model its answer and what was wrong with it.
    retry = llm.requests_for(fixed)[1].messages
    assert retry[-2] == {"role": "assistant", "content": happy}
    assert "emotion: 'Happy' is not an allowed value" in retry[-1]["content"]
    assert len(llm.requests_for(off_list)) == 3 and len(llm.requests_for(malformed)) == 3
    assert records[off_list]["labels"] is None
    assert records[off_list]["error"] == (
        "invalid answer (3 attempts): emotion: 'Happy' is not an allowed value")
    assert records[malformed]["labels"] is None
    # Read as RLAIF-SPA's "Name: value" form, whose one comma-joined line is off-list.
    assert ("structure: 'Statement, Emotion: Neutral' is not an allowed value"
            in records[malformed]["error"])
    assert {p.text for p in load_prompts(out)} == {fixed, "Good one."}


def test_429_with_retry_after_and_5xx_are_retried(tmp_path: Path) -> None:
    limited, flaky = "Rate limited sentence.", "Flaky server sentence."
    llm = StandInLLM({limited: [Reply(status=429, headers={"Retry-After": "1"}), Reply()],
                      flaky: [Reply(status=500), Reply(status=503), Reply()]})
    with serve(llm) as url:
        stats = run_label_all([limited, flaky], tmp_path / "p.jsonl", url)
    assert (stats.labelled, stats.unlabelled, stats.failed) == (2, 0, 0)
    first, second = llm.requests_for(limited)
    assert second.time - first.time >= 1.0  # waited as long as Retry-After asked
    assert len(llm.requests_for(flaky)) == 3
    assert {r["text"] for r in read_records(tmp_path / "p.jsonl", SCHEMA)} == {limited, flaky}


def test_a_response_that_is_not_a_chat_completion_is_retried(tmp_path: Path) -> None:
    odd = "A gateway answered this."
    llm = StandInLLM({odd: [Reply(raw={"status": "queued"}), Reply()]})
    with serve(llm) as url:
        stats = run_label_all([odd], tmp_path / "p.jsonl", url)
    assert stats.labelled == 1 and len(llm.requests_for(odd)) == 2


def test_hostile_responses_are_retried_or_recorded_never_a_traceback(tmp_path: Path) -> None:
    deep, not_utf8, nested, huge = ("Deep nesting.", "Bad bytes.", "Nested answer.",
                                    "Huge answer.")
    llm = StandInLLM({deep: [Reply(body=b"[" * 100_000)],
                      not_utf8: [Reply(body=b'{"choices": "\xff\xfe"}'), Reply()],
                      nested: [Reply(content='{"a":' * 5000)],
                      huge: [Reply(content="x" * (2 << 20))]})
    out = tmp_path / "p.jsonl"
    with serve(llm) as url:
        stats = run_label_all([deep, not_utf8, nested, huge], out, url, retries=1)
    assert (stats.labelled, stats.unlabelled, stats.failed) == (1, 2, 1)
    assert stats.last_failure.startswith(f"{url}/chat/completions: response is not a chat")
    assert len(llm.requests_for(not_utf8)) == 2  # retried, then labelled
    records = {r["text"]: r for r in read_records(out, SCHEMA)}
    assert records[not_utf8]["labels"] == GOOD
    assert "invalid answer (2 attempts): no JSON object" in records[nested]["error"]
    assert records[huge]["error"] == (f"{url}/chat/completions: response of 2097314 bytes "
                                      f"exceeds the limit of 1048576")


def test_a_long_retry_after_is_logged_and_shown(caplog) -> None:
    waits: list[float] = []
    client = OpenAIChat("http://127.0.0.1:9/v1", "m", None, on_wait=waits.append)
    client._pause(100_000, RetryPolicy().delay(0, 100_000))
    assert waits == [600.0]
    assert "rate limited, every request waits 600 s (asked 100000 s, capped)" in caplog.text


def test_timeouts_are_retried(tmp_path: Path) -> None:
    slow = "A very slow answer."
    llm = StandInLLM({slow: [Reply(delay_s=1.0), Reply()]})
    with serve(llm) as url:
        stats = run_label_all([slow], tmp_path / "p.jsonl", url, timeout_s=0.3)
    assert stats.labelled == 1 and len(llm.requests_for(slow)) == 2


def test_a_sentence_the_endpoint_keeps_failing_is_left_for_the_rerun(tmp_path: Path) -> None:
    broken, fine = "The server breaks here.", "This one works."
    out = tmp_path / "p.jsonl"
    with serve(StandInLLM({broken: [Reply(status=502)]})) as url:
        stats = run_label_all([broken, fine], out, url, retries=1)
    assert (stats.labelled, stats.failed) == (1, 1) and "HTTP 502" in stats.last_failure
    assert [r["text"] for r in read_records(out, SCHEMA)] == [fine]  # nothing recorded

    healed = StandInLLM()
    with serve(healed) as url:
        assert label(write_texts(tmp_path / "t.txt", [broken, fine]), out, url) == 0
    assert [s.sentence for s in healed.seen] == [broken]
    assert {p.text for p in load_prompts(out)} == {broken, fine}


def test_cli_exits_1_and_says_to_rerun_when_sentences_are_left(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with serve(StandInLLM({"Broken.": [Reply(status=500)]})) as url:
        rc = label(write_texts(tmp_path / "t.txt", ["Broken.", "Works."]), tmp_path / "p.jsonl",
                   url, "--retries", "0")
    assert rc == 1
    assert "rerun the same command" in capsys.readouterr().err


def test_a_down_endpoint_stops_the_run_instead_of_trying_every_sentence(tmp_path: Path) -> None:
    sentences = [f"Sentence number {i}." for i in range(MAX_FAILURE_STREAK + 5)]
    llm = StandInLLM({s: [Reply(status=503)] for s in sentences})
    with serve(llm) as url, pytest.raises(EndpointUnusable, match="in a row failed"):
        run_label_all(sentences, tmp_path / "p.jsonl", url, retries=0, concurrency=1)
    assert len(llm.seen) == MAX_FAILURE_STREAK


def test_unauthorised_stops_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p.jsonl"
    with serve(StandInLLM({"Hello.": [Reply(status=401)]})) as url:
        assert label(write_texts(tmp_path / "t.txt", ["Hello."]), out, url) == 1
    assert "HTTP 401 unauthorised: check the API key" in capsys.readouterr().err
    assert out.read_text() == ""


def test_torn_last_line_is_repaired_and_relabelled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    done, torn = "Already labelled.", "Torn while writing."
    out = tmp_path / "p.jsonl"
    out.write_text(json.dumps({"text": done, "labels": GOOD}) + "\n"
                   + json.dumps({"text": torn, "labels": GOOD})[:25])
    llm = StandInLLM()
    with serve(llm) as url:
        assert label(write_texts(tmp_path / "t.txt", [done, torn]), out, url) == 0
    assert [s.sentence for s in llm.seen] == [torn]
    assert sorted(p.text for p in load_prompts(out)) == sorted([done, torn])
    assert "removed a torn last line" in caplog.text


def test_a_bad_line_in_the_middle_is_reported_not_overwritten(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p.jsonl"
    content = (json.dumps({"text": "A.", "labels": {**GOOD, "emotion": "Happy"}}) + "\n"
               + json.dumps({"text": "B.", "labels": GOOD}) + "\n")
    out.write_text(content)
    with serve(StandInLLM()) as url:
        assert label(write_texts(tmp_path / "t.txt", ["A.", "B.", "C."]), out, url) == 1
    assert f"{out}:1: labels.emotion: 'Happy'" in capsys.readouterr().err
    assert out.read_text() == content


def test_resume_after_the_process_is_killed_mid_run(tmp_path: Path) -> None:
    sentences = [f"This is sentence {i}." for i in range(24)]
    source, out = write_texts(tmp_path / "t.txt", sentences), tmp_path / "p.jsonl"
    first = StandInLLM(delay_s=0.1)
    with serve(first) as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlaif.cli", "label", "--in", str(source), "--out", str(out),
             "--endpoint", url, "--model", "stand-in", "--concurrency", "2"],
            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=os.environ.copy())
        try:
            deadline = time.monotonic() + 60
            while (not out.exists() or out.read_text().count("\n") < 6) \
                    and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    written = {r["text"] for r in read_records(out, SCHEMA)}
    assert 6 <= len(written) < len(sentences)

    second = StandInLLM()
    with serve(second) as url:
        assert label(source, out, url) == 0
    assert not written & {s.sentence for s in second.seen}  # nothing written is asked again
    texts = [r["text"] for r in read_records(out, SCHEMA)]
    assert sorted(texts) == sorted(sentences)  # every sentence exactly once
