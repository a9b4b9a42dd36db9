"""The reward server: ``rlaif reward serve``. One app for every reward kind.

The HTTP side listens at once (``/healthz`` answers while the model loads); the model is
loaded and warmed up in a thread, after which ``/readyz`` turns 200 and one "ready" line
is logged (the local runner waits on it). ``POST /v1/score`` decodes and checks items,
queues the good ones on the micro-batcher and answers in request order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import ValidationError

from rlaif.api.labels import LabelSchema
from rlaif.modelref import ModelNotFound, is_builtin, resolve
from rlaif.rewards.batcher import MicroBatcher
from rlaif.rewards.metrics import ServerMetrics
from rlaif.rewards.protocol import ItemError, Limits, RequestError, parse_request
from rlaif.rewards.scoring import ScoreInput, Scorer, ScoreResult, prepare

log = logging.getLogger(__name__)

ACOUSTIC_REF = "builtin:acoustic"


@dataclass
class ServerSettings:
    kind: str
    model: str
    device: str = "auto"
    max_batch: int = 16
    max_wait_ms: float = 10.0
    limits: Limits = field(default_factory=Limits)
    schema: LabelSchema = field(default_factory=LabelSchema)


def build_scorer(settings: ServerSettings) -> Scorer:
    """The scorer for ``kind`` and ``model`` (constructed only: ``load`` reads the weights)."""
    path = resolve(settings.model)
    device = resolve_device(settings.device)
    if settings.kind == "asr":
        from rlaif.rewards.asr import AsrScorer

        return AsrScorer(path, device)
    if settings.kind == "mos":
        from rlaif.rewards.mos import MosScorer

        return MosScorer(path, device)
    if settings.kind == "speaker":
        from rlaif.rewards.speaker import SpeakerScorer

        return SpeakerScorer(path, device)
    if settings.kind == "judge":
        if settings.model == ACOUSTIC_REF:
            from rlaif.rewards.acoustic import AcousticJudge

            return AcousticJudge(settings.schema)
        if is_builtin(settings.model):
            raise ModelNotFound(f"{settings.model} is not a judge model "
                                f"(use {ACOUSTIC_REF} or a Qwen2-Audio directory)")
        from rlaif.rewards.judge import LlmJudge

        return LlmJudge(path, device, settings.schema)
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
        self.metrics = ServerMetrics(settings.kind)
        self.ready = asyncio.Event()
        self.load_error: BaseException | None = None
        self.batcher = MicroBatcher(scorer.score_batch, max_batch=settings.max_batch,
                                    max_wait_ms=settings.max_wait_ms,
                                    on_batch=self.metrics.observe_batch,
                                    on_queue=self.metrics.queue_depth.set)
        self._loader: asyncio.Task[None] | None = None

    def make_app(self) -> web.Application:
        # Slack over the body limit so our handler, not aiohttp, words the 413.
        app = web.Application(client_max_size=self.settings.limits.max_body_bytes + 1)
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

    async def handle_score(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        try:
            response = await self._score(request)
        except RequestError as exc:
            response = _json({"error": exc.message}, exc.status)
        self.metrics.requests.labels(status=str(response.status)).inc()
        self.metrics.latency.observe(time.perf_counter() - start)
        return response

    async def _score(self, request: web.Request) -> web.Response:
        if not self.ready.is_set():
            raise RequestError(503, "model is not ready yet (see /readyz)")
        limit = self.settings.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(413, f"body: {request.content_length} bytes exceed the limit "
                                    f"of {limit} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(413, f"body: exceeds the limit of {limit} bytes") from None
        parsed = await asyncio.get_running_loop().run_in_executor(
            None, parse_request, body, self.settings.limits, self.settings.schema)
        checked = [self._check(i, item) for i, item in enumerate(parsed)]
        good = [item for item in checked if isinstance(item, ScoreInput)]
        results = iter(await self.batcher.score(good))
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

    def _check(self, index: int, item: ScoreInput | ItemError) -> ScoreInput | ItemError:
        if isinstance(item, ScoreInput) and (why := self.scorer.check(item)) is not None:
            return ItemError(item.id, f"items[{index}].{why}")
        return item


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(_jsonable(obj), allow_nan=False), status=status,
                        content_type="application/json")


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
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"--label-schema {path}: {problems}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--label-schema {path}: {exc}") from None


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms must not be negative, got {args.max_wait_ms}")
    return ServerSettings(kind=args.kind, model=args.model, device=args.device,
                          max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                          schema=load_label_schema(args.label_schema))


async def serve(settings: ServerSettings, host: str, port: int) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until the model fails to load (exit 1)."""
    stop = asyncio.Event()
    state = RewardApp(build_scorer(settings), settings, on_load_failure=stop.set)
    runner = web.AppRunner(state.make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("listening on http://%s:%d (%s reward, loading %s)", host, port, settings.kind,
             settings.model)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    return 1 if state.load_error is not None else 0


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        return asyncio.run(serve(settings, args.host, args.port))
    except (ValueError, ModelNotFound) as exc:
        log.error("%s", exc)
        return 2
