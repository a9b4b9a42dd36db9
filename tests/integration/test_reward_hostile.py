"""The reward server against hostile clients: malformed HTTP, hang-ups, slow senders, overload.

A real server (the acoustic judge, no weights) runs in-process; every case checks the answer,
that it was counted in the metrics, and that the server still scores a clean request.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.request

import numpy as np
import pytest

from rlaif.audio import encode_pcm16
from rlaif.rewards.protocol import Limits
from rlaif.rewards.server import ServerSettings
from tests.integration.reward_support import (
    SENTENCE,
    ServerThread,
    post,
    running_server,
    speak,
)

LABELS = {"speechRate": "Medium Fast", "intonation": "Declarative"}
LIMITS = Limits(max_items=8, max_body_bytes=1 << 20, max_audio_seconds=10,
                max_request_audio_seconds=30)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speak(SENTENCE, rate=170)


@pytest.fixture(scope="module")
def server():
    settings = ServerSettings(kind="judge", model="builtin:acoustic", max_batch=2,
                              max_wait_ms=5, limits=LIMITS, max_queued_audio_seconds=5,
                              read_timeout_s=1.0)
    s = ServerThread(settings).start()
    yield s
    s.stop()


def item(i: str, audio: np.ndarray, rate: int = 16000) -> dict:
    return {"id": i, "audio": {"sampleRate": rate, "pcm16": encode_pcm16(audio)},
            "text": SENTENCE, "labels": LABELS}


def body(*items: dict) -> bytes:
    return json.dumps({"items": list(items)}).encode()


def noise(seconds: float) -> np.ndarray:
    """Noise takes the acoustic judge about a second per 10 s: a batch that stays busy."""
    return (0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))).astype(
        np.float32)


def send_raw(server: ServerThread, head: bytes, payload: bytes = b"") -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    conn.sendall(head + payload)
    return conn


def status_of(conn: socket.socket) -> tuple[int, bytes]:
    """Status and body of the answer, read up to its Content-Length (the server may keep
    draining an unread request body for a while before it closes)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += conn.recv(65536)
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += conn.recv(65536)
    return int(head.split()[1]), rest


def exchange(server: ServerThread, head: bytes, payload: bytes = b"") -> tuple[int, bytes]:
    with send_raw(server, head, payload) as conn:
        return status_of(conn)


def wait_for(server: ServerThread, metric: str, above: float) -> None:
    deadline = time.monotonic() + 30
    while server.metric(metric) <= above:
        assert time.monotonic() < deadline, f"{metric} never rose above {above}"
        time.sleep(0.01)


def count(server: ServerThread, status: int) -> float:
    try:
        return server.metric(f'rlaif_reward_requests_total{{status="{status}"}}')
    except KeyError:
        return 0.0


def request_head(length: int, extra: str = "") -> bytes:
    return (f"POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n{extra}\r\n").encode()


@pytest.mark.parametrize(("payload", "headers", "status", "message"), [
    (b"[" * 10000, "", 400, "body: JSON nested too deeply"),
    (b'{"items": ' + b"[" * 5000 + b"]" * 5000 + b"}", "", 400, "JSON nested too deeply"),
    (b'{"items": []}', "Content-Encoding: gzip\r\n", 415, "Content-Encoding: 'gzip'"),
    (b'{"items": []}', "Content-Encoding: br\r\n", 415, "Content-Encoding: 'br'"),
    (b'{"items": []}', "Content-Encoding: deflate\r\n", 415, "not supported"),
    (b'{"items": [{"id": "x", "audio": {"sampleRate": 1000, "pcm16": "AAAA"}}]}', "", 200,
     "sampleRate: expected an integer from 8000"),
    (b'{"items": [{"id": "x", "audio": {"sampleRate": 16000, "pcm16": "AAAAAA=="}, "labels": '
     b'{"emotion": ' + b"[" * 500 + b"]" * 500 + b"}}]}", "", 200,
     "labels.emotion: expected a label"),
])
def test_malformed_requests_get_answers_naming_the_problem(server, payload, headers, status,
                                                          message) -> None:
    before = count(server, status)
    got, answer = exchange(server, request_head(len(payload), headers), payload)
    assert got == status
    assert message in answer.decode()
    assert count(server, status) == before + 1


def test_unknown_paths_and_methods_are_json_and_counted(server) -> None:
    before = count(server, 404)
    got, answer = exchange(server, b"POST /v2/score HTTP/1.1\r\nHost: t\r\n"
                                   b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert got == 404 and json.loads(answer)["error"] == "POST /v2/score: Not Found"
    assert count(server, 404) == before + 1
    got, _ = exchange(server, b"GET /v1/score HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert got == 405


def test_hang_up_mid_body_is_counted_without_a_traceback(server, caplog) -> None:
    before = count(server, 499)
    with caplog.at_level(logging.INFO):
        conn = send_raw(server, request_head(100_000), b'{"items": [' + b" " * 1000)
        time.sleep(0.1)
        conn.close()
        deadline = time.monotonic() + 10
        while count(server, 499) == before and time.monotonic() < deadline:
            time.sleep(0.02)
    assert count(server, 499) == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_slow_senders_time_out_with_408(server) -> None:
    with send_raw(server, request_head(1000), b'{"items": [') as conn:
        got, answer = status_of(conn)  # the rest never comes; read_timeout_s is 1 s
        assert got == 408 and "not received within 1 s" in answer.decode()
        assert conn.recv(1) == b""  # and the connection is closed


def test_oversized_bodies_are_refused_before_reading(server) -> None:
    got, answer = exchange(server, request_head(50 << 20))  # headers only: nothing is awaited
    assert got == 413 and "52428800 bytes exceed the limit of 1048576" in answer.decode()


def test_requests_over_the_audio_budget_are_refused_from_base64_lengths(server) -> None:
    # 4 items of 9 s at 8 kHz (768 kB): every item fits, together they exceed 30 s.
    status, answer = post(server.url, body(*[item(f"i{k}", noise(4.5), 8000) for k in range(4)]))
    assert status == 413
    assert answer["error"] == "items: 36.0 s of audio in all exceed the limit of 30 s per request"


def test_a_full_queue_answers_503_with_retry_after(server, speech) -> None:
    big = body(item("busy", noise(10)))
    conn = send_raw(server, request_head(len(big)), big)
    wait_for(server, "rlaif_reward_queued_audio_seconds", 0)
    req = urllib.request.Request(server.url + "/v1/score", data=body(item("late", speech)))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 503
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert "server busy: audio seconds queued" in json.loads(refused.value.read())["error"]
    with conn:
        assert status_of(conn)[0] == 200  # the admitted request is still scored


def test_a_client_that_hangs_up_leaves_no_work_behind(speech) -> None:
    settings = ServerSettings(kind="judge", model="builtin:acoustic", max_batch=2,
                              max_wait_ms=5, limits=LIMITS)
    with running_server(settings) as server:
        (_, alone) = post(server.url, body(item("probe", speech)))
        scored_before = server.metric("rlaif_reward_batch_size_sum")
        busy = body(item("a1", noise(6)), item("a2", noise(6)))  # one batch, seconds long
        first = send_raw(server, request_head(len(busy)), busy)
        wait_for(server, "rlaif_reward_scoring", 0)
        queued = body(item("b1", speech), item("b2", speech))
        second = send_raw(server, request_head(len(queued)), queued)
        wait_for(server, "rlaif_reward_queued_audio_seconds", 12)  # b1 and b2 wait in line
        second.close()
        with first:
            assert status_of(first)[0] == 200
        deadline = time.monotonic() + 10
        while count(server, 499) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert count(server, 499) == 1
        assert server.metric("rlaif_reward_batch_size_sum") == scored_before + 2  # a1, a2
        assert server.metric("rlaif_reward_queued_audio_seconds") == 0
        assert post(server.url, body(item("probe", speech))) == (200, alone)
