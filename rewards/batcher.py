"""Dynamic micro-batching: items from concurrent requests are scored together.

Each item waits in one queue; a single worker takes up to ``max_batch`` items, waiting at
most ``max_wait_ms`` after the first for more to arrive, and runs the scorer in a worker
thread so the event loop (health checks, new requests) stays responsive. Results go back
to each item's own future, so every caller gets its own answers in order. A caller that is
cancelled (its client hung up) leaves futures that are done: their items are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from rlaif.rewards.scoring import ScoreInput, ScoreResult

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[ScoreInput]], list[ScoreResult]]


class ShuttingDown(Exception):
    """Set on the futures of items the server stopped before scoring."""


class ScorerThread(Executor):
    """One daemon thread running jobs in order. Unlike ThreadPoolExecutor's threads, which
    the interpreter joins at exit, a model call still running at shutdown is abandoned, so
    SIGTERM stops the server within a bound however long the batch would take."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._work, name="scorer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the awaiting caller, as an executor does
                future.set_exception(exc)


@dataclass
class _Pending:
    item: ScoreInput
    future: asyncio.Future[ScoreResult]


class MicroBatcher:
    """Queue + one worker task; ``on_batch(size, seconds)`` feeds the metrics."""

    def __init__(self, score_fn: ScoreFn, *, max_batch: int, max_wait_ms: float,
                 on_batch: Callable[[int, float], None] = lambda n, s: None,
                 on_queue: Callable[[int], None] = lambda depth: None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self.score_fn = score_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self.on_queue = on_queue
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        # One thread: a model is never called concurrently with itself.
        self._executor = ScorerThread()
        self._worker: asyncio.Task[None] | None = None
        self._batch: asyncio.Future[list[ScoreResult]] | None = None
        self._stopped = False
        self._audio_s = self._model_s = 0.0

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self, grace_s: float = 0.0) -> None:
        """Fail the queued items at once, give the batch being scored ``grace_s`` to finish,
        then abandon it (its items fail with ShuttingDown too). Safe to call twice."""
        self._stopped = True
        self._fail_queued()
        if self._batch is not None:
            await asyncio.wait({self._batch}, timeout=grace_s)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._fail_queued()
        self._executor.shutdown(wait=False)

    @property
    def busy(self) -> bool:
        """Whether a batch is being scored now."""
        return self._batch is not None and not self._batch.done()

    def audio_rate(self) -> float | None:
        """Seconds of audio scored per second of model time so far (None before any batch)."""
        return self._audio_s / self._model_s if self._model_s > 0 else None

    def _fail_queued(self) -> None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown())
        self.on_queue(0)

    async def run_exclusive(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the scorer thread, e.g. loading, which must not overlap scoring."""
        await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def score(self, items: list[ScoreInput]) -> list[ScoreResult]:
        """Score ``items`` (possibly alongside other callers' items); results in order."""
        if self._stopped:
            raise ShuttingDown()
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, loop.create_future()) for item in items]
        for p in pending:
            self._queue.put_nowait(p)
        self.on_queue(self._queue.qsize())
        return list(await asyncio.gather(*(p.future for p in pending)))

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            self.on_queue(self._queue.qsize())
            live = [p for p in batch if not p.future.done()]  # caller gone: skip the work
            if not live:
                continue
            start = time.perf_counter()
            self._batch = asyncio.get_running_loop().run_in_executor(
                self._executor, score_robustly, self.score_fn, [p.item for p in live])
            try:
                results = await asyncio.shield(self._batch)
            except asyncio.CancelledError:
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(ShuttingDown())
                raise
            seconds = time.perf_counter() - start
            self.on_batch(len(live), seconds)
            self._audio_s += sum(p.item.seconds for p in live)
            self._model_s += seconds
            for p, result in zip(live, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch


def score_robustly(score_fn: ScoreFn, items: list[ScoreInput]) -> list[ScoreResult]:
    """Score a batch; if the batch fails, score items one by one so only the culprit fails."""
    try:
        results = score_fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"scorer returned {len(results)} results for {len(items)} items")
        return results
    except Exception as exc:
        if len(items) == 1:
            log.warning("scoring item %r failed: %s", items[0].id, exc, exc_info=True)
            return [ScoreResult.failed(f"scoring failed: {type(exc).__name__}: {exc}")]
        log.warning("batch of %d failed (%s); scoring its items one by one", len(items), exc)
        return [score_robustly(score_fn, [item])[0] for item in items]
