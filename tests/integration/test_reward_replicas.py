"""The reward client spreads a submission over a reward's replicas, passes over a dead one,
honours Retry-After, and expands a headless Service's name into its pods' addresses."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from rlaif.config import RewardEndpoint
from rlaif.data import Prompt
from rlaif.reward_client import RewardClient, ScoreItem
from rlaif.reward_replicas import expand
from tests.integration.reward_support import SENTENCE, free_port, running_server, speak
from tests.integration.test_reward_client import LABELS, judge_settings

ITEMS_SCORED = "rlaif_reward_batch_size_sum"


class SlowStub:
    """A stand-in for a slow reward model (one request at a time, ``seconds`` per item) that
    records when it worked; its first ``refuse`` answers are 429 with a Retry-After."""

    def __init__(self, seconds: float = 0.0, refuse: int = 0, retry_after: str = "0.5"):
        self.seconds, self.refuse, self.retry_after = seconds, refuse, retry_after
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.arrivals: list[float] = []
        self.busy: list[tuple[float, float]] = []
        self.items = 0
        self._lock = asyncio.Lock()

    async def score(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        if self.refuse:
            self.refuse -= 1
            return web.Response(status=429, headers={"Retry-After": self.retry_after})
        items = json.loads(await request.read())["items"]
        async with self._lock:
            start = time.monotonic()
            await asyncio.sleep(self.seconds * len(items))
            self.busy.append((start, time.monotonic()))
            self.items += len(items)
        return web.json_response({"scores": [{"id": it["id"], "score": 0.5} for it in items]})


@contextmanager
def serving(*stubs: SlowStub) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners = []
    for stub in stubs:
        app = web.Application()
        app.router.add_post("/v1/score", stub.score)
        runner = web.AppRunner(app)
        asyncio.run_coroutine_threadsafe(runner.setup(), loop).result()
        site = web.TCPSite(runner, "127.0.0.1", stub.port)
        asyncio.run_coroutine_threadsafe(site.start(), loop).result()
        runners.append(runner)
    try:
        yield
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def silent_items(n: int) -> list[ScoreItem]:
    return [ScoreItem(id=f"s{i}", audio=np.zeros(1600, dtype=np.float32)) for i in range(n)]


def test_two_real_replicas_each_score_half_with_the_same_scores() -> None:
    speech = speak(SENTENCE, rate=160)
    batch = [ScoreItem(id=f"s{i}", audio=speech[: len(speech) - 800 * i], text=SENTENCE,
                       labels=LABELS) for i in range(8)]
    with running_server(judge_settings()) as a, running_server(judge_settings()) as b:
        both = RewardEndpoint(name="judge", url=a.url, replica_urls=[b.url], weight=1.0)
        with RewardClient([both]) as client:
            shared = client.score(batch)
        assert (a.metric(ITEMS_SCORED), b.metric(ITEMS_SCORED)) == (4, 4)
        with RewardClient([RewardEndpoint(name="judge", url=a.url, weight=1.0)]) as client:
            alone = client.score(batch)
    assert shared.ids == alone.ids == [it.id for it in batch]
    np.testing.assert_allclose(shared.per_reward["judge"], alone.per_reward["judge"])


def test_slow_replicas_work_at_the_same_time() -> None:
    stubs = SlowStub(seconds=0.1), SlowStub(seconds=0.1)
    with serving(*stubs):
        endpoint = RewardEndpoint(name="slow", url=stubs[0].url, replica_urls=[stubs[1].url],
                                  weight=1.0)
        with RewardClient([endpoint]) as client:
            futures = [client.submit(silent_items(4)) for _ in range(2)]
            scores = [f.result() for f in futures]
    assert [s.errors for s in scores] == [{"slow": 0}] * 2
    assert stubs[0].items == stubs[1].items == 4
    (start_a, end_a), (start_b, end_b) = stubs[0].busy[0], stubs[1].busy[0]
    assert start_a < end_b and start_b < end_a  # both worked on the first group together


def test_a_dead_replica_is_passed_over() -> None:
    live = SlowStub()
    with serving(live):
        dead = f"http://127.0.0.1:{free_port()}"
        endpoint = RewardEndpoint(name="r", url=dead, replica_urls=[live.url], weight=1.0)
        with RewardClient([endpoint], retries=4, backoff_s=0.01) as client:
            scores = client.score(silent_items(8))
    assert scores.errors == {"r": 0} and live.items == 8


def test_retry_after_of_a_busy_server_is_waited() -> None:
    busy = SlowStub(refuse=1, retry_after="0.5")
    with serving(busy):
        endpoint = RewardEndpoint(name="r", url=busy.url, weight=1.0)
        with RewardClient([endpoint], retries=2, backoff_s=0.01) as client:
            scores = client.score(silent_items(2))
    assert scores.errors == {"r": 0} and busy.items == 2
    first, second = busy.arrivals
    assert second - first >= 0.5  # our own backoff alone would have been ~0.01 s


def test_a_headless_service_name_stands_for_each_pod(monkeypatch) -> None:
    # Cluster DNS cannot run here: the resolver is a stand-in answering like a headless
    # Service (one A record per ready pod, AAAA records too on a dual-stack cluster).
    pods = ["10.0.0.7", "10.0.0.9"]

    async def headless(self, host, port, *, type=0, **_):
        assert (host, port, type) == ("judge.ns.svc", 8080, socket.SOCK_STREAM)
        v4 = [(socket.AF_INET, type, 6, "", (ip, port)) for ip in pods]
        return [*v4, (socket.AF_INET6, type, 6, "", ("fd00::7", port, 0, 0))]

    async def one(self, host, port, *, type=0, **_):
        return [(socket.AF_INET, type, 6, "", ("10.96.0.1", port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", headless)
    assert asyncio.run(expand("http://judge.ns.svc:8080")) == [
        "http://10.0.0.7:8080", "http://10.0.0.9:8080"]
    assert asyncio.run(expand("http://127.0.0.1:8080")) == ["http://127.0.0.1:8080"]
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", one)
    assert asyncio.run(expand("http://judge.ns.svc:8080")) == ["http://judge.ns.svc:8080"]


@pytest.mark.parametrize("header, wanted", [("2", 2.0), ("1000", 30.0), ("soon", 0.0)])
def test_retry_after_values(header: str, wanted: float) -> None:
    from rlaif.reward_client import _retry_after_s

    assert _retry_after_s(header) == wanted


def test_rlaif_run_starts_each_replica_and_the_client_uses_them(tmp_path) -> None:
    from rlaif.api.validation import load_job
    from rlaif.runner import start_reward_servers, wait_ready

    job = load_job(Path(__file__).resolve().parents[2] / "examples" / "quickstart-cpu.yaml")
    judge = next(r for r in job.spec.rewards if r.model == "builtin:acoustic")
    job.spec.rewards = [judge.model_copy(update={"replicas": 2})]
    job.spec.evaluation = None
    servers, endpoints = start_reward_servers(job, tmp_path)
    try:
        assert len(servers) == 2 and len(endpoints[0].urls) == 2
        wait_ready(servers, endpoints, 120)
        speech = speak(SENTENCE, rate=160)
        with RewardClient(endpoints) as client:
            scores = client.score([ScoreItem(id=f"s{i}", audio=speech, text=SENTENCE,
                                             labels=LABELS) for i in range(4)])
        assert scores.errors == {judge.name: 0}
        assert [items_scored(url) for url in endpoints[0].urls] == [2, 2]
    finally:
        for server in servers:
            server.stop()


def items_scored(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return float(next(x for x in lines if x.startswith(ITEMS_SCORED + " ")).split()[1])


def test_a_voice_prompt_goes_with_every_rendering_of_it(tmp_path) -> None:
    import soundfile as sf

    from rlaif.data import VoiceReference

    voice = speak(SENTENCE, rate=160)
    sf.write(tmp_path / "ref.wav", voice, 16000)
    prompt = Prompt(SENTENCE, dict(LABELS), VoiceReference(tmp_path / "ref.wav", SENTENCE))
    item = ScoreItem.for_prompt("s0", voice[:1600], prompt)
    assert (item.text, item.labels) == (SENTENCE, LABELS)
    assert item.reference_audio is not None
    np.testing.assert_allclose(item.reference_audio, voice, atol=1e-4)  # 16-bit WAV
    assert "reference" in item.to_wire()
    assert ScoreItem.for_prompt("s1", voice, Prompt(SENTENCE)).reference_audio is None
