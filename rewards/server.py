"""The reward server: ``rlaif reward serve``. One app for every reward kind.

The HTTP side listens at once (``/healthz`` answers while the model loads); the model is
loaded and warmed up in a thread, after which ``/readyz`` turns 200 and one "ready" line
is logged (the local runner waits on it). ``POST /v1/score`` reads the body within its
limits, admits the request if the server-wide budgets allow (else 503 + Retry-After), decodes
and checks items, queues the good ones on the micro-batcher and answers in request order.
A client that hangs up cancels its handler, and its queued items are dropped. One middleware
turns every outcome into a JSON answer counted in the metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from rlaif.api.labels import LabelSchema
from rlaif.api.models import JudgeSpec
from rlaif.api.validation import pydantic_errors
from rlaif.constants import (
    JUDGE_API_KEY_ENV,
    REWARD_MAX_QUEUED_AUDIO_SECONDS,
    REWARD_MAX_READING_BYTES,
)
from rlaif.modelref import ModelNotFound, is_builtin, resolve
from rlaif.rewards.admission import Budget, retry_after_s
from rlaif.rewards.batcher import MicroBatcher, ShuttingDown
from rlaif.rewards.metrics import CLIENT_CLOSED, ServerMetrics
from rlaif.rewards.protocol import ItemError, Limits, RequestError, decode_items, read_items
from rlaif.rewards.scoring import ScoreInput, Scorer, ScoreResult, prepare

log = logging.getLogger(__name__)

ACOUSTIC_REF = "builtin:acoustic"
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
READ_CHUNK_BYTES = 1 << 16
# After answering a request whose body was not read (413, 503), its rest is read and dropped
# this long so a client that sends it all before reading still gets the answer.
LINGER_S = 2.0
HANDLER_DRAIN_S = 2.0  # at shutdown, after the batch: time for handlers to send their answers


@dataclass
class ServerSettings:
    """One server's configuration; ``limits`` None means the kind's defaults
    (``default_limits``). Budgets and timeouts bound what any client can make it do."""

    kind: str
    model: str
    device: str = "auto"
    max_batch: int = 16
    max_wait_ms: float = 10.0
    limits: Limits | None = None
    schema: LabelSchema = field(default_factory=LabelSchema)
    judge: JudgeSpec = field(default_factory=JudgeSpec)  # kind judge: dimensions, backend
    asr_packing: bool = False  # kind asr: short clips share a Whisper window (rewards/asr.py)
    max_queued_audio_seconds: float = REWARD_MAX_QUEUED_AUDIO_SECONDS
    max_reading_bytes: int = REWARD_MAX_READING_BYTES
    read_timeout_s: float = 60.0  # to receive a whole body (slow senders get 408)
    idle_timeout_s: float = 15.0  # an idle keep-alive connection is closed after this
    shutdown_grace_s: float = 10.0  # after SIGTERM, for the batch being scored


def default_limits(kind: str) -> Limits:
    """Per-request limits of a kind: DNSMOS scores 9-s windows at 1-s hops, so a second of
    long audio costs it far more than the other models; its limits are tighter."""
    if kind == "mos":
        from rlaif.rewards.mos import LIMITS

        return LIMITS
    return Limits()


def build_scorer(settings: ServerSettings) -> Scorer:
    """The scorer for ``kind`` and ``model`` (constructed only: ``load`` reads the weights)."""
    if settings.kind == "judge" and settings.judge.served:
        from rlaif.rewards.judge_openai import ServedJudge

        return ServedJudge(settings.model, settings.judge, settings.schema,
                           api_key=os.environ.get(JUDGE_API_KEY_ENV) or None)
    path = resolve(settings.model)
    device = resolve_device(settings.device)
    if settings.kind == "asr":
        from rlaif.rewards.asr import AsrScorer

        return AsrScorer(path, device, packing=settings.asr_packing)
    if settings.kind == "mos":
        from rlaif.rewards.mos import MosScorer

        return MosScorer(path, device)
    if settings.kind == "speaker":
        from rlaif.rewards.speaker import SpeakerScorer

        return SpeakerScorer(path, device)
    if settings.kind == "judge":
        if settings.model == ACOUSTIC_REF:
            from rlaif.rewards.acoustic import AcousticJudge

            return AcousticJudge(settings.schema, tuple(settings.judge.dimensions))
        if is_builtin(settings.model):
            raise ModelNotFound(f"{settings.model} is not a judge model "
                                f"(use {ACOUSTIC_REF} or a Qwen2-Audio directory)")
        from rlaif.rewards.judge import LlmJudge

        return LlmJudge(path, device, settings.schema, tuple(settings.judge.dimensions))
    raise ValueError(f"kind: unknown reward kind {settings.kind!r}")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class RewardApp:
    """State of one server: scorer, batcher, metrics, readiness."""

    def __init__(self, scorer: Scorer, settings: ServerSettings,
                 on_load_failure: Callable[[], None] = lambda: None):
        self.on_load_failure = on_load_failure
        self.scorer = scorer
        self.settings = settings
        self.limits = settings.limits or default_limits(settings.kind)
        self.metrics = ServerMetrics(settings.kind)
        self.ready = asyncio.Event()
        self.draining = False
        self.load_error: BaseException | None = None
        self.batcher = MicroBatcher(scorer.score_batch, max_batch=settings.max_batch,
                                    max_wait_ms=settings.max_wait_ms,
                                    on_batch=self.metrics.observe_batch,
                                    on_queue=self.metrics.queue_depth.set)
        self.reading = Budget("request bytes being read", settings.max_reading_bytes)
        self.queued = Budget("audio seconds queued", settings.max_queued_audio_seconds)
        self.metrics.reading_bytes.set_function(lambda: self.reading.used)
        self.metrics.queued_audio_seconds.set_function(lambda: self.queued.used)
        self.metrics.scoring.set_function(lambda: self.batcher.busy)
        self._loader: asyncio.Task[None] | None = None

    def make_app(self) -> web.Application:
        # Slack over the body limit so our handler, not aiohttp, words the 413.
        app = web.Application(client_max_size=self.limits.max_body_bytes + 1,
                              middlewares=[self._answer_and_count])
        app.router.add_post("/v1/score", self.handle_score)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self.batcher.start()
        self._loader = asyncio.get_running_loop().create_task(self._load())

    def make_runner(self) -> web.AppRunner:
        """The runner both ``serve`` and the tests use: a handler is cancelled when its
        client hangs up, idle connections are closed, and shutdown does not wait long."""
        return web.AppRunner(self.make_app(), access_log=None, handler_cancellation=True,
                             auto_decompress=False,  # compressed bodies are refused (415)
                             keepalive_timeout=self.settings.idle_timeout_s,
                             lingering_time=LINGER_S,
                             shutdown_timeout=HANDLER_DRAIN_S)

    async def drain(self) -> None:
        """Stop taking work: new requests get 503, queued items are dropped, and the batch
        in progress gets ``shutdown_grace_s`` to finish before it is abandoned."""
        self.draining = True
        busy = self.batcher.busy
        await self.batcher.stop(self.settings.shutdown_grace_s)
        if busy and self.batcher.busy:
            log.warning("abandoning the batch in progress after %g s",
                        self.settings.shutdown_grace_s)

    async def _stop(self, app: web.Application) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        await self.batcher.stop()

    async def _load(self) -> None:
        start = time.perf_counter()
        try:
            await self.batcher.run_exclusive(partial(prepare, self.scorer))
        except Exception as exc:
            self.load_error = exc
            log.error("loading %s model %s failed: %s", self.settings.kind,
                      self.settings.model, exc, exc_info=True)
            self.on_load_failure()
            return
        seconds = time.perf_counter() - start
        self.metrics.load_seconds.set(seconds)
        self.metrics.ready.set(1)
        self.ready.set()
        log.info("ready: %s reward, model %s, loaded and warmed up in %.1f s",
                 self.settings.kind, self.settings.model, seconds)

    # ------------------------------------------------------------------ handlers

    async def handle_healthz(self, request: web.Request) -> web.Response:
        if self.load_error is not None:
            return _json({"status": "failed", "error": str(self.load_error)}, 500)
        return _json({"status": "ok"})

    async def handle_readyz(self, request: web.Request) -> web.Response:
        if self.ready.is_set():
            return _json({"status": "ready", "kind": self.settings.kind})
        return _json({"status": "loading" if self.load_error is None else "failed"}, 503)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            content_type="text/plain", charset="utf-8")

    @web.middleware
    async def _answer_and_count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every outcome becomes a JSON answer and, except for the probes, a count by status;
        a client that hung up is counted as 499 and logged at debug level only."""
        start = time.perf_counter()
        try:
            response = await handler(request)
        except RequestError as exc:
            response = _error(exc.status, exc.message, exc.retry_after)
        except web.HTTPException as exc:  # the router's 404 and 405
            response = _error(exc.status, f"{request.method} {request.path}: {exc.reason}")
        except (ConnectionError, asyncio.CancelledError) as exc:
            log.debug("%s %s: client hung up (%s)", request.method, request.path,
                      type(exc).__name__)
            self._count(request, CLIENT_CLOSED, start)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return _error(CLIENT_CLOSED, "client hung up")
        except Exception:
            log.exception("%s %s: unexpected error", request.method, request.path)
            response = _error(500, "internal error (logged by the server)")
        self._count(request, response.status, start)
        return response

    def _count(self, request: web.Request, status: int, start: float) -> None:
        if request.path in PROBES:
            return
        self.metrics.requests.labels(status=str(status)).inc()
        self.metrics.latency.observe(time.perf_counter() - start)

    async def handle_score(self, request: web.Request) -> web.Response:
        if self.draining:
            raise RequestError(503, "server is shutting down", retry_after=1)
        if not self.ready.is_set():
            raise RequestError(503, "model is not ready yet (see /readyz)")
        loop = asyncio.get_running_loop()
        with self.reading.hold(self._bytes_to_hold(request), retry_after=1):
            body = await self._read_body(request)
            admitted = await loop.run_in_executor(None, read_items, body, self.limits)
            del body
        retry_after = retry_after_s(self.queued.used, self.batcher.audio_rate())
        with self.queued.hold(admitted.audio_seconds, retry_after):
            parsed = await loop.run_in_executor(None, decode_items, admitted,
                                                self.settings.schema)
            checked = [self._check(i, item) for i, item in enumerate(parsed)]
            good = [item for item in checked if isinstance(item, ScoreInput)]
            try:
                results = iter(await self.batcher.score(good))
            except ShuttingDown:
                raise RequestError(503, "server is shutting down", retry_after=1) from None
        scores = []
        for item in checked:
            if isinstance(item, ItemError):
                scores.append({"id": item.id, "error": item.error})
                continue
            result: ScoreResult = next(results)
            if result.error is not None:
                scores.append({"id": item.id, "error": f"{result.error}"})
            else:
                scores.append({"id": item.id, "score": result.score, "details": result.details})
                self.metrics.audio_seconds.inc(item.seconds)
        errors = sum("error" in s for s in scores)
        self.metrics.items.labels(status="error").inc(errors)
        self.metrics.items.labels(status="ok").inc(len(scores) - errors)
        return _json({"scores": scores})

    def _bytes_to_hold(self, request: web.Request) -> int:
        """What the body will take: its declared length, or the limit when it has none.
        Refused unread: a compressed body (415; audio hardly compresses, and decompressing
        would let a small body take a lot of memory) and a declared length over the limit."""
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding != "identity":
            raise RequestError(415, f"Content-Encoding: {encoding[:40]!r} is not supported; "
                                    f"send the JSON body uncompressed")
        limit = self.limits.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise RequestError(413, f"body: {declared} bytes exceed the limit of {limit} bytes")
        return limit if declared is None else declared

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, counted while it streams in, within ``read_timeout_s``."""
        limit, timeout = self.limits.max_body_bytes, self.settings.read_timeout_s
        chunks, size = [], 0
        try:
            async with asyncio.timeout(timeout):
                async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"body: exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestError(408, f"body: not received within {timeout:g} s") from None
        except HttpProcessingError as exc:  # a malformed chunked encoding, for one
            raise RequestError(400, f"body: cannot be read ({exc.message})") from None
        return b"".join(chunks)

    def _check(self, index: int, item: ScoreInput | ItemError) -> ScoreInput | ItemError:
        if isinstance(item, ScoreInput) and (why := self.scorer.check(item)) is not None:
            return ItemError(item.id, f"items[{index}].{why}")
        return item


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(_jsonable(obj), allow_nan=False), status=status,
                        content_type="application/json")


def _error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    response = _json({"error": message}, status)
    if retry_after is not None:
        response.headers[hdrs.RETRY_AFTER] = str(retry_after)
    return response


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars become floats/ints, NaN/inf become null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and not isinstance(obj, (int, float)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


# ---------------------------------------------------------------------- command line


def load_label_schema(path: str | None) -> LabelSchema:
    """The label schema file (YAML or JSON), or RLAIF-SPA's lists when none is given."""
    if path is None:
        return LabelSchema()
    try:
        return LabelSchema.model_validate(yaml.safe_load(Path(path).read_text()) or {})
    except ValidationError as exc:
        raise ValueError(f"--label-schema {path}: {validation_problems(exc)}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--label-schema {path}: {exc}") from None


def load_judge_settings(text: str | None) -> JudgeSpec:
    """``--judge``: a RewardServer's spec.judge as JSON (default: local, all dimensions)."""
    if text is None:
        return JudgeSpec()
    try:
        return JudgeSpec.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(f"--judge: {validation_problems(exc)}") from None


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as ``field.path: message`` pairs, one per problem."""
    return "; ".join(str(problem) for problem in pydantic_errors(exc))


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms must not be negative, got {args.max_wait_ms}")
    for flag in ("max_queue_seconds", "read_timeout_s", "shutdown_grace_s"):
        if not 0 < getattr(args, flag) < math.inf:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive number of seconds, "
                             f"got {getattr(args, flag)}")
    return ServerSettings(kind=args.kind, model=args.model, device=args.device,
                          max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                          schema=load_label_schema(args.label_schema),
                          judge=load_judge_settings(args.judge),
                          asr_packing=args.asr_packing,
                          max_queued_audio_seconds=args.max_queue_seconds,
                          read_timeout_s=args.read_timeout_s,
                          shutdown_grace_s=args.shutdown_grace_s)


async def serve(settings: ServerSettings, host: str, port: int) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until the model fails to load (exit 1)."""
    stop = asyncio.Event()
    state = RewardApp(build_scorer(settings), settings, on_load_failure=stop.set)
    runner = state.make_runner()
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("listening on http://%s:%d (%s reward, loading %s)", host, port, settings.kind,
             settings.model)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: new requests get 503, queued items are dropped")
    await state.drain()
    await runner.cleanup()
    code = 1 if state.load_error is not None else 0
    if state.batcher.busy:
        # The abandoned batch still runs in native code (numba, ONNX Runtime, CTranslate2):
        # finalising the interpreter under it can abort the process ("terminate called
        # without an active exception", SIGABRT). Flush, then leave without finalising.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        return asyncio.run(serve(settings, args.host, args.port))
    except (ValueError, ModelNotFound) as exc:
        log.error("%s", exc)
        return 2
