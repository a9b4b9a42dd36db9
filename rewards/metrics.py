"""Prometheus metrics of one reward server (own registry, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "rlaif_reward"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CLIENT_CLOSED = 499  # the status counted (nginx's convention) when a client hangs up


class ServerMetrics:
    """Requests and items by status, latency, batch size, queue depth, audio scored, load time."""

    def __init__(self, kind: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Gauge(f"{PREFIX}_server_info", "Reward kind served.", ["kind"], registry=r)
        self.info.labels(kind=kind).set(1)
        self.requests = Counter(f"{PREFIX}_requests_total",
                                "Requests other than probes by HTTP status (499: client hung up).",
                                ["status"], registry=r)
        self.items = Counter(f"{PREFIX}_items_total", "Items by outcome (ok or error).",
                             ["status"], registry=r)
        self.latency = Histogram(f"{PREFIX}_request_seconds", "Score request latency.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Items per model call.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram(f"{PREFIX}_batch_seconds", "Model time per batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Items waiting for a batch.",
                                 registry=r)
        self.scoring = Gauge(f"{PREFIX}_scoring", "1 while the model scores a batch.", registry=r)
        self.queued_audio_seconds = Gauge(f"{PREFIX}_queued_audio_seconds",
                                          "Audio admitted and not yet scored.", registry=r)
        self.reading_bytes = Gauge(f"{PREFIX}_reading_bytes",
                                   "Request bytes being read or parsed.", registry=r)
        self.audio_seconds = Counter(f"{PREFIX}_audio_seconds_total",
                                     "Seconds of audio scored.", registry=r)
        self.load_seconds = Gauge(f"{PREFIX}_model_load_seconds",
                                  "Model load plus warm-up time.", registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 once the model is loaded and warm.", registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
