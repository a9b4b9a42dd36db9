"""The reward client against real reward servers (the acoustic judge: no weights to load)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rlaif.config import RewardEndpoint
from rlaif.reward_client import (
    RewardClient,
    RewardRejected,
    RewardScores,
    RewardUnavailable,
    ScoreItem,
)
from rlaif.rewards.server import ServerSettings
from tests.integration.reward_support import SENTENCE, ServerThread, free_port, speak

LABELS = {"speechRate": "Medium Fast", "intonation": "Declarative", "emotion": "Neutral"}


def judge_settings() -> ServerSettings:
    return ServerSettings(kind="judge", model="builtin:acoustic", max_batch=8, max_wait_ms=5)


@pytest.fixture(scope="module")
def servers():
    started = [ServerThread(judge_settings()).start(), ServerThread(judge_settings()).start()]
    yield started
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speak(SENTENCE, rate=160)


def items(speech: np.ndarray, n: int) -> list[ScoreItem]:
    return [ScoreItem(id=f"s{i}", audio=speech[: len(speech) - 800 * i], text=SENTENCE,
                      labels=LABELS) for i in range(n)]


def test_weighted_total_from_servers_queried_in_parallel(servers, speech) -> None:
    endpoints = [RewardEndpoint(name="a", url=servers[0].url, weight=0.3),
                 RewardEndpoint(name="b", url=servers[1].url, weight=0.7)]
    with RewardClient(endpoints) as client:
        scores = client.score(items(speech, 3))
    assert scores.ids == ["s0", "s1", "s2"]
    assert set(scores.per_reward) == {"a", "b"} and scores.errors == {"a": 0, "b": 0}
    a, b = scores.per_reward["a"], scores.per_reward["b"]
    assert np.all((a > 0) & (a <= 1))
    np.testing.assert_allclose(a, b)  # same judge, same audio
    np.testing.assert_allclose(scores.total, 0.3 * a + 0.7 * b)
    assert scores.total.dtype == np.float64
    assert scores.details["a"][0]["syllablesPerSecond"] > 0


def test_weights_changed_between_steps_apply_to_the_next_total(servers, speech) -> None:
    endpoints = [RewardEndpoint(name="a", url=servers[0].url, weight=0.3),
                 RewardEndpoint(name="b", url=servers[1].url, weight=0.7)]
    with RewardClient(endpoints) as client:
        client.set_weights({"b": 2.0})
        scores = client.score(items(speech, 2))
        assert client.weights == {"a": 0.3, "b": 2.0}
        with pytest.raises(ValueError, match="unknown reward"):
            client.set_weights({"c": 1.0})
        with pytest.raises(ValueError, match="greater than 0"):
            client.set_weights({"a": 0.0})
    a, b = scores.per_reward["a"], scores.per_reward["b"]
    np.testing.assert_allclose(scores.total, 0.3 * a + 2.0 * b)


def test_submit_overlaps_and_concat_matches_one_call(servers, speech) -> None:
    endpoint = [RewardEndpoint(name="a", url=servers[0].url, weight=1.0)]
    batch = items(speech, 4)
    with RewardClient(endpoint, max_items_per_request=3) as client:
        futures = [client.submit(batch[:2]), client.submit(batch[2:])]
        joined = RewardScores.concat([f.result() for f in futures])
        whole = client.score(batch)  # 4 items in requests of 3 + 1
        empty = client.score([])
    assert joined.ids == whole.ids == ["s0", "s1", "s2", "s3"]
    np.testing.assert_allclose(joined.total, whole.total)
    assert empty.ids == [] and empty.per_reward["a"].shape == (0,)


def test_items_a_server_cannot_score_are_nan_not_zero_and_are_counted(servers, speech) -> None:
    endpoint = [RewardEndpoint(name="a", url=servers[0].url, weight=2.0)]
    batch = items(speech, 3)
    batch[1].labels = {"structure": "Question"}  # nothing the acoustic judge can score
    with RewardClient(endpoint) as client:
        scores = client.score(batch)
    assert scores.errors == {"a": 1}
    assert np.isnan(scores.per_reward["a"][1]) and np.isnan(scores.total[1])
    assert scores.unscorable.tolist() == [False, True, False]
    assert scores.total[0] == pytest.approx(2.0 * scores.per_reward["a"][0]) and scores.total[0] > 0
    assert "items[1].labels" in scores.details["a"][1]["error"]
    assert scores.first_error("a") == scores.details["a"][1]["error"]


def test_retries_until_a_briefly_down_server_comes_up(speech) -> None:
    server = ServerThread(judge_settings(), port=free_port())
    starter = threading.Timer(1.0, server.start, kwargs={"wait": False})
    starter.start()
    try:
        endpoint = [RewardEndpoint(name="late", url=server.url, weight=1.0)]
        with RewardClient(endpoint, retries=8, backoff_s=0.2) as client:
            scores = client.score(items(speech, 1))  # connection refused, then 503, then 200
        assert scores.errors == {"late": 0} and scores.per_reward["late"][0] > 0
    finally:
        starter.join()
        server.stop()


def test_fails_clearly_when_a_server_stays_down(speech) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    endpoint = [RewardEndpoint(name="gone", url=url, weight=1.0)]
    with RewardClient(endpoint, retries=2, backoff_s=0.01) as client, pytest.raises(
            RewardUnavailable, match=rf"'gone' at {url}/v1/score failed after 3 attempts"):
        client.score(items(speech, 1))


def test_a_request_the_server_refuses_is_not_retried(servers, speech) -> None:
    endpoint = [RewardEndpoint(name="a", url=servers[0].url, weight=1.0)]
    too_many = [ScoreItem(id=str(i), audio=speech[:1600]) for i in range(65)]
    with RewardClient(endpoint, max_items_per_request=100) as client, pytest.raises(
            RewardRejected, match=r"HTTP 413.*65 items exceed the limit of 64"):
        client.score(too_many)


def test_client_rejects_duplicate_reward_names() -> None:
    ep = RewardEndpoint(name="a", url="http://x", weight=1.0)
    with pytest.raises(ValueError, match="unique"):
        RewardClient([ep, ep])
