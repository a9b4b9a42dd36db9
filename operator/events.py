"""Events are posted by one thread, not by the reconciliation that reports them.

A reconciliation never waits for an Event (as with client-go's recorder), and Events yield
to reconciliations: an Event waits until none has been due or running for ``quiet``
seconds, or for ``max_delay`` seconds at most. Under a burst of jobs the operator's time
goes to children first (Events were a quarter of it: a job and its three servers post
ten), and ``kubectl describe`` has them a moment later. Order is kept; past ``limit``
waiting Events the oldest are dropped (and logged), so a flood cannot grow the operator's
memory without bound.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from rlaif.operator.kube import Kube, Manifest

LOG = logging.getLogger(__name__)
FLUSH_SECONDS = 2.0
"""How long a stopping operator keeps posting what is left."""


class Recorder:
    def __init__(self, kube: Kube, idle_for: Callable[[], float], quiet: float = 0.2,
                 max_delay: float = 5.0, limit: int = 10_000):
        self.kube, self.idle_for, self.quiet, self.max_delay = kube, idle_for, quiet, max_delay
        self._pending: collections.deque[tuple[float, Manifest, str, str, str]] = \
            collections.deque(maxlen=limit)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self, stop: threading.Event) -> None:
        """Post from a thread of its own until ``stop`` (a daemon: ``join`` waits for the
        flush, and an operator whose cleanup never ran still exits)."""
        self._thread = threading.Thread(target=self.run, args=(stop,), name="events",
                                        daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the thread started by ``start`` to post what is left."""
        if self._thread is not None:
            self._thread.join(FLUSH_SECONDS + 1)

    def record(self, about: Manifest, type_: str, reason: str, message: str) -> None:
        """Queue an Event about ``about``; returns at once. Only what the Event names is
        kept, not the object (a burst's waiting Events would hold every old version)."""
        meta = about["metadata"]
        about = {"apiVersion": about["apiVersion"], "kind": about["kind"],
                 "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")}}
        with self._cond:
            if len(self._pending) == self._pending.maxlen:  # the append drops the oldest
                self.dropped += 1
                LOG.warning("%d Events waiting: dropped the oldest", len(self._pending))
            self._pending.append((time.monotonic(), about, type_, reason, message))
            self._cond.notify()

    def _next(self, stop: threading.Event) -> tuple[Manifest, str, str, str] | None:
        """The oldest Event once it may go (see the module); None when stopped with nothing
        left."""
        while True:
            with self._cond:
                while not self._pending and not stop.is_set():
                    self._cond.wait(1.0)
                if not self._pending:
                    return None
                queued = self._pending[0][0]
                if stop.is_set() or self.idle_for() >= self.quiet \
                        or time.monotonic() - queued >= self.max_delay:
                    return self._pending.popleft()[1:]
            stop.wait(0.05)

    def run(self, stop: threading.Event) -> None:
        """Post Events until ``stop``, then what is left for up to FLUSH_SECONDS."""
        deadline: float | None = None
        while (event := self._next(stop)) is not None:
            self.kube.post_event(*event)
            if stop.is_set():
                deadline = deadline or time.monotonic() + FLUSH_SECONDS
                if time.monotonic() > deadline:
                    LOG.warning("stopping with %d Events not posted", len(self._pending))
                    return
