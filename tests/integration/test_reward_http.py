"""The reward server over HTTP: contract, concurrency, micro-batching, bad input, signals."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlaif.audio import encode_pcm16
from rlaif.rewards.protocol import Limits
from rlaif.rewards.server import RewardApp, ServerSettings, build_scorer
from tests.integration.reward_support import (
    SENTENCE,
    ServerThread,
    free_port,
    get_json,
    post,
    speak,
    wait_ready,
)

LABELS = {"speechRate": "Medium Fast", "intonation": "Declarative"}
LIMITS = Limits(max_items=8, max_body_bytes=1 << 20, max_audio_seconds=10)


@pytest.fixture(scope="module")
def server():
    settings = ServerSettings(kind="judge", model="builtin:acoustic", max_batch=16,
                              max_wait_ms=30, limits=LIMITS)
    s = ServerThread(settings).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speak(SENTENCE, rate=170)


def item(i: str, audio: np.ndarray, **extra) -> dict:
    return {"id": i, "audio": {"sampleRate": 16000, "pcm16": encode_pcm16(audio)},
            "text": SENTENCE, "labels": LABELS, **extra}


def test_health_ready_and_metrics(server) -> None:
    assert get_json(server.url + "/healthz") == (200, {"status": "ok"})
    assert get_json(server.url + "/readyz") == (200, {"status": "ready", "kind": "judge"})
    assert server.metric("rlaif_reward_ready") == 1
    assert server.metric("rlaif_reward_model_load_seconds") > 0


async def test_concurrent_clients_get_their_own_results_in_order(server, speech) -> None:
    # 8 clients, 3 items each, every item a different length: scores identify the items.
    clips = {f"c{c}-{k}": speech[: 12000 + 800 * (3 * c + k)] for c in range(8) for k in range(3)}
    (status, alone) = post(server.url, json.dumps(
        {"items": [item(i, a) for i, a in list(clips.items())[:8]]}).encode())
    assert status == 200
    batches_before = server.metric("rlaif_reward_batch_size_count")

    async with aiohttp.ClientSession() as session:
        async def client(c: int) -> list[dict]:
            ids = [f"c{c}-{k}" for k in range(3)]
            body = {"items": [item(i, clips[i]) for i in ids]}
            async with session.post(server.url + "/v1/score", json=body) as resp:
                assert resp.status == 200
                return (await resp.json())["scores"]

        answers = await asyncio.gather(*(client(c) for c in range(8)))
    for c, scores in enumerate(answers):
        assert [s["id"] for s in scores] == [f"c{c}-{k}" for k in range(3)]
        assert all(0 <= s["score"] <= 1 for s in scores)
    expected = {s["id"]: s["score"] for s in alone["scores"]}
    got = {s["id"]: s["score"] for scores in answers for s in scores}
    for i, score in expected.items():
        assert got[i] == pytest.approx(score)
    batches = server.metric("rlaif_reward_batch_size_count") - batches_before
    assert batches < 24  # 24 items in fewer model calls: micro-batching batched them
    assert server.metric("rlaif_reward_batch_size_sum") > server.metric(
        "rlaif_reward_batch_size_count")


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"not json", 400, "body: not valid JSON"),
    (b'{"itemz": []}', 400, "items: required"),
    (b'{"items": {}}', 400, "items: expected a list"),
    (json.dumps({"items": [{"id": str(i)} for i in range(9)]}).encode(), 413,
     "items: 9 items exceed the limit of 8"),
    (b"x" * ((1 << 20) + 10), 413, "body: "),
    (json.dumps({"items": [{"id": "long", "audio": {
        "sampleRate": 16000, "pcm16": encode_pcm16(np.zeros(16000 * 11, np.float32))}}]}).encode(),
     413, "items[0].audio: 11.0 s of audio exceed the limit of 10 s"),
])
def test_bad_requests_get_status_and_field(server, body, status, message) -> None:
    got_status, answer = post(server.url, body)
    assert got_status == status
    assert message in answer["error"]


def test_bad_items_are_answered_in_place(server, speech) -> None:
    items = [item("good", speech), {"id": "b64", "audio": {"pcm16": "%%%"}},
             item("label", speech, labels={"intonation": "Sung"}), item("good2", speech)]
    status, answer = post(server.url, json.dumps({"items": items}).encode())
    assert status == 200
    scores = answer["scores"]
    assert [s["id"] for s in scores] == ["good", "b64", "label", "good2"]
    assert "score" in scores[0] and "score" in scores[3]
    assert scores[1]["error"].startswith("items[1].audio.pcm16: not valid base64")
    assert scores[2]["error"].startswith("items[2].labels.intonation: 'Sung' is not one of")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "audio", "pcm16", "sampleRate", "labels", "text", "reference",
                         "items", "emotion", "x"]), children, max_size=5),
    max_leaves=20)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(json_values, max_size=5).map(lambda v: json.dumps({"items": v}).encode()),
    st.lists(st.fixed_dictionaries({
        "id": st.text(max_size=5), "audio": st.fixed_dictionaries({
            "sampleRate": st.integers(-10, 100000) | st.floats(),
            "pcm16": st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
            | st.text(max_size=10)}),
        "labels": st.dictionaries(st.sampled_from(["emotion", "intonation", "speechRate"]),
                                  st.sampled_from(["Neutral", "Declarative", "Slow", "?"]))}),
        max_size=4).map(lambda v: json.dumps({"items": v}).encode()),
)


@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=payloads)
def test_random_payloads_never_break_the_server(server, body: bytes) -> None:
    status, answer = post(server.url, body)
    assert status in (200, 400, 413), answer
    if status == 200:
        for entry in answer["scores"]:
            assert "error" in entry or 0 <= entry["score"] <= 1
    else:
        assert isinstance(answer["error"], str) and answer["error"]
    assert get_json(server.url + "/healthz")[0] == 200


def test_a_model_that_fails_to_load_is_reported_not_ready(tmp_path) -> None:
    settings = ServerSettings(kind="speaker", model=str(tmp_path), device="cpu")
    server = ServerThread(settings)
    server.start(wait=False)
    try:
        for _ in range(1200):  # importing transformers takes a while on a busy machine
            if server.state.load_error is not None:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert server.state.load_error is not None
        assert get_json(server.url + "/readyz") == (503, {"status": "failed"})
        assert get_json(server.url + "/healthz")[0] == 500
        status, answer = post(server.url, b'{"items": []}')
        assert status == 503 and "not ready" in answer["error"]
    finally:
        server.stop()


def test_unknown_models_fail_fast() -> None:
    with pytest.raises(ValueError, match="not a judge model"):
        build_scorer(ServerSettings(kind="judge", model="builtin:dnsmos"))
    with pytest.raises(ValueError, match="does not exist"):
        RewardApp(build_scorer(ServerSettings(kind="asr", model="/nonexistent")),
                  ServerSettings(kind="asr", model="/nonexistent"))


def test_cli_server_logs_ready_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlaif.cli", "reward", "serve", "--kind", "judge", "--model",
         "builtin:acoustic", "--host", "127.0.0.1", "--port", str(port), "--max-batch", "16",
         "--shutdown-grace-s", "0.5"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # 16 clips of 10 s of noise: one batch the acoustic judge needs half a minute for.
    noise = 0.1 * np.random.default_rng(0).standard_normal(160000).astype(np.float32)
    busy = json.dumps({"items": [{"id": f"n{i}", "labels": LABELS, "audio": {
        "sampleRate": 16000, "pcm16": encode_pcm16(noise)}} for i in range(16)]}).encode()
    try:
        wait_ready(url, timeout_s=120)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(post, url, busy)
            while "rlaif_reward_scoring 1.0" not in metrics_text(url):
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)  # far less than the batch would take
            status, body = answer.result()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "ready: judge reward, model builtin:acoustic" in err
    assert "shutting down" in err and "abandoning the batch in progress" in err
    assert (status, body) == (503, {"error": "server is shutting down"})


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_cli_exits_nonzero_when_the_model_cannot_load(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rlaif.cli", "reward", "serve", "--kind", "mos", "--model",
         str(tmp_path), "--host", "127.0.0.1", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "DNSMOS ONNX models" in proc.stderr
