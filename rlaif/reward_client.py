"""The trainer's side of the reward-server contract.

One batched request per server replica, all servers and replicas in parallel, from a
background event loop so the trainer can submit a group as soon as it is rendered and keep
generating while it is scored. A submission is split evenly over a reward's replicas and
each request goes to the least busy one (rlaif.reward_replicas), so N replicas share one
trainer's load. Transient failures (connection errors, timeouts, 5xx, 429) are retried with
exponential backoff and jitter, waiting at least what a Retry-After header asks. An item a
server could not score is NaN for that reward (not 0, which would punish the sample and drag
its group's mean), counted, and its total is NaN too: the trainer leaves unscorable samples
out of group statistics (as TRL's GRPOTrainer does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from rlaif.audio import encode_pcm16
from rlaif.config import RewardEndpoint
from rlaif.constants import REWARD_MAX_ITEMS, SAMPLE_RATE
from rlaif.data import Prompt
from rlaif.reward_replicas import Replicas

log = logging.getLogger(__name__)

SCORE_PATH = "/v1/score"
MAX_RETRY_AFTER_S = 30.0


@dataclass
class ScoreItem:
    id: str
    audio: np.ndarray  # float32 mono
    sample_rate: int = SAMPLE_RATE
    text: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    reference_audio: np.ndarray | None = None  # for speaker similarity (same sample rate)

    @classmethod
    def for_prompt(cls, id: str, audio: np.ndarray, prompt: Prompt) -> ScoreItem:
        """A rendering of ``prompt``: its text, labels and voice prompt (the reference audio
        a similarity reward compares with), in training, held-out evaluation and rlaif eval
        alike."""
        voice = prompt.reference.waveform() if prompt.reference is not None else None
        return cls(id=id, audio=audio, text=prompt.text, labels=dict(prompt.labels),
                   reference_audio=voice)

    def to_wire(self) -> dict[str, Any]:
        """The item as the contract's JSON object (audio as base64 pcm16)."""
        item: dict[str, Any] = {
            "id": self.id,
            "audio": {"sampleRate": self.sample_rate, "pcm16": encode_pcm16(self.audio)},
            "text": self.text,
            "labels": dict(self.labels),
        }
        if self.reference_audio is not None:
            item["reference"] = {"audio": {"sampleRate": self.sample_rate,
                                           "pcm16": encode_pcm16(self.reference_audio)}}
        return item


@dataclass
class RewardScores:
    ids: list[str]
    total: np.ndarray  # weighted sum over rewards, per item (float64); NaN: unscorable
    per_reward: dict[str, np.ndarray]  # reward name -> score in [0,1] per item, NaN: failed
    details: dict[str, list[dict]]  # reward name -> the server's details, or {"error": why}
    errors: dict[str, int]  # reward name -> items the server could not score (NaN)

    @property
    def unscorable(self) -> np.ndarray:
        """Bool per item: some reward that counts in the total failed on it."""
        return np.isnan(self.total)

    def first_error(self, name: str) -> str | None:
        """The first item error reward ``name`` reported (for a log line), or None."""
        return next((d["error"] for d in self.details[name] if "error" in d), None)

    @staticmethod
    def concat(parts: Sequence[RewardScores]) -> RewardScores:
        """Join scores of consecutive submissions (same rewards) into one, in order."""
        if not parts:
            raise ValueError("RewardScores.concat needs at least one part")
        names = list(parts[0].per_reward)
        return RewardScores(
            ids=[i for p in parts for i in p.ids],
            total=np.concatenate([p.total for p in parts]).astype(np.float64),
            per_reward={n: np.concatenate([p.per_reward[n] for p in parts]) for n in names},
            details={n: [d for p in parts for d in p.details[n]] for n in names},
            errors={n: sum(p.errors[n] for p in parts) for n in names},
        )


class RewardUnavailable(RuntimeError):
    """A reward server did not answer usefully after the last retry (message names it)."""


class RewardRejected(RewardUnavailable):
    """A reward server refused the request itself (4xx): retrying would not help."""


class _Retryable(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, 429, garbled answer)."""

    def __init__(self, message: str, retry_after_s: float = 0.0, connect: bool = False):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.connect = connect


class _Rejected(Exception):
    """A 4xx answer."""


@dataclass
class _RewardColumn:
    scores: np.ndarray
    details: list[dict]
    errors: int


class RewardClient:
    """Scores audio on every configured reward server and combines the weighted total."""

    def __init__(self, endpoints: Sequence[RewardEndpoint], *, timeout_s: float = 300.0,
                 retries: int = 4, backoff_s: float = 0.5,
                 max_items_per_request: int = REWARD_MAX_ITEMS):
        if not endpoints:
            raise ValueError("RewardClient needs at least one reward endpoint")
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        self.endpoints = list(endpoints)
        self._replicas = {e.name: Replicas(e.urls) for e in endpoints}
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_items_per_request = max_items_per_request
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reward-client",
                                        daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    def submit(self, items: Sequence[ScoreItem]) -> concurrent.futures.Future[RewardScores]:
        """Send now (per server one batched request per replica, all in parallel) from a
        background event-loop thread; the trainer submits each group as soon as it is
        rendered, so scoring overlaps generation."""
        if self._closed:
            raise RuntimeError("RewardClient is closed")
        ids = [it.id for it in items]
        if not ids:
            done: concurrent.futures.Future[RewardScores] = concurrent.futures.Future()
            done.set_result(self._empty())
            return done
        wire = [json.dumps(it.to_wire()) for it in items]  # encoded once for every server
        return asyncio.run_coroutine_threadsafe(self._score_all(ids, wire), self._loop)

    def score(self, items: Sequence[ScoreItem]) -> RewardScores:
        return self.submit(items).result()

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Change reward weights between steps (the operator applies spec edits live)."""
        known = {ep.name for ep in self.endpoints}
        if unknown := sorted(set(weights) - known):
            raise ValueError(f"unknown reward(s) {unknown}; known: {sorted(known)}")
        if bad := sorted(name for name, w in weights.items() if not w > 0):
            raise ValueError(f"reward weights must be greater than 0: {bad}")
        self.endpoints = [ep.model_copy(update={"weight": float(weights.get(ep.name, ep.weight))})
                          for ep in self.endpoints]

    @property
    def weights(self) -> dict[str, float]:
        return {ep.name: ep.weight for ep in self.endpoints}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session is not None:
            asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _empty(self) -> RewardScores:
        names = [ep.name for ep in self.endpoints]
        return RewardScores(ids=[], total=np.zeros(0), per_reward={n: np.zeros(0) for n in names},
                            details={n: [] for n in names}, errors=dict.fromkeys(names, 0))

    async def _score_all(self, ids: list[str], wire: list[str]) -> RewardScores:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        columns = await asyncio.gather(*(self._score_one(ep, ids, wire)
                                         for ep in self.endpoints))
        by_name = dict(zip([ep.name for ep in self.endpoints], columns, strict=True))
        per_reward = {name: col.scores for name, col in by_name.items()}
        return RewardScores(
            ids=ids, total=weighted_total(self.weights, per_reward), per_reward=per_reward,
            details={name: col.details for name, col in by_name.items()},
            errors={name: col.errors for name, col in by_name.items()},
        )

    async def _score_one(self, ep: RewardEndpoint, ids: list[str],
                         wire: list[str]) -> _RewardColumn:
        replicas = self._replicas[ep.name]
        await replicas.refresh()
        size = min(self.max_items_per_request, -(-len(wire) // replicas.count))
        bodies = [f'{{"items": [{", ".join(chunk)}]}}'.encode() for chunk in _chunks(wire, size)]
        parts = await asyncio.gather(*(self._post_with_retries(ep, body) for body in bodies))
        return _column(ep, ids, [answer for part in parts for answer in part])

    async def _post_with_retries(self, ep: RewardEndpoint, body: bytes) -> list[dict]:
        replicas = self._replicas[ep.name]
        for attempt in range(self.retries + 1):
            async with replicas.acquire() as replica:
                url = replica.url + SCORE_PATH
                try:
                    return await self._post(url, body)
                except _Retryable as exc:
                    if exc.connect:
                        replicas.failed(replica)
                    if attempt == self.retries:
                        raise RewardUnavailable(
                            f"reward {ep.name!r} at {url} failed after {attempt + 1} "
                            f"attempts: {exc}") from None
                    delay = max(exc.retry_after_s,
                                self.backoff_s * 2**attempt * random.uniform(0.5, 1.5))
                    log.warning("reward %r at %s: %s; retrying in %.2f s", ep.name, url, exc,
                                delay)
                except _Rejected as exc:
                    raise RewardRejected(f"reward {ep.name!r} at {url} rejected the request: "
                                         f"{exc}") from None
            await asyncio.sleep(delay)  # outside the block: a waiting request is not in flight
        raise AssertionError("unreachable")

    async def _post(self, url: str, body: bytes) -> list[dict]:
        assert self._session is not None
        try:
            async with self._session.post(
                    url, data=body, headers={"Content-Type": "application/json"}) as resp:
                text = await resp.text()
                status = resp.status
                retry_after = _retry_after_s(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError as exc:  # an OSError too since 3.11: caught first
            raise _Retryable(f"timeout: {exc}") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}", connect=True) from None
        except aiohttp.ClientError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if status >= 500 or status == 429:  # 429/503: the server's backpressure
            raise _Retryable(f"HTTP {status}: {text[:200]}", retry_after)
        if status >= 400:
            raise _Rejected(f"HTTP {status}: {text[:500]}")
        try:
            scores = json.loads(text)["scores"]
        except (ValueError, KeyError, TypeError):
            raise _Retryable(f"answer is not {{'scores': [...]}}: {text[:200]!r}") from None
        if not isinstance(scores, list):
            raise _Retryable("answer 'scores' is not a list")
        return scores


def weighted_total(weights: Mapping[str, float], per_reward: Mapping[str, np.ndarray]
                   ) -> np.ndarray:
    """sum(weight * score) per item. A failed (NaN) score makes the total NaN: a partial sum
    would rank the sample against complete ones on a different scale. A reward weighted 0
    does not count, so its failures do not poison the total."""
    total = np.zeros(len(next(iter(per_reward.values()))), dtype=np.float64)
    for name, scores in per_reward.items():
        if weights[name] != 0:
            total += weights[name] * scores
    return total


def _column(ep: RewardEndpoint, ids: list[str], answers: list[dict]) -> _RewardColumn:
    """Scores in item order; an item the server could not score (an item error, or no
    finite score) is NaN and counted, never 0."""
    if len(answers) != len(ids):
        raise RewardUnavailable(f"reward {ep.name!r} at {ep.url} answered {len(answers)} "
                                f"scores for {len(ids)} items")
    scores = np.full(len(ids), np.nan, dtype=np.float64)
    details: list[dict] = []
    errors = 0
    for i, (item_id, ans) in enumerate(zip(ids, answers, strict=True)):
        score = ans.get("score") if isinstance(ans, dict) else None
        if not isinstance(ans, dict) or ans.get("id") != item_id:
            raise RewardUnavailable(f"reward {ep.name!r} at {ep.url}: answer {i} is for id "
                                    f"{ans.get('id') if isinstance(ans, dict) else ans!r}, "
                                    f"expected {item_id!r}")
        if "error" in ans or not isinstance(score, (int, float)) or not np.isfinite(score):
            errors += 1
            reason = ans.get("error", f"no usable score in {ans!r}")
            details.append({"error": reason})
            if errors == 1:
                log.warning("reward %r could not score item %r: %s", ep.name, item_id, reason)
            continue
        scores[i] = min(1.0, max(0.0, float(score)))
        details.append(ans.get("details") or {})
    return _RewardColumn(scores, details, errors)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _retry_after_s(value: str | None) -> float:
    """Seconds a Retry-After header asks for (delta-seconds form), capped; 0 if absent."""
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0  # the HTTP-date form: fall back to our own backoff
