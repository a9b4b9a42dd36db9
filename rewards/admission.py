"""Backpressure: server-wide budgets a request must fit in before it costs anything.

Two budgets bound the server whatever its clients do: bytes of request bodies being read or
parsed at once (memory), and seconds of audio admitted but not yet scored (queue wait). A
request that does not fit is refused at once with 503 and a Retry-After; a request is always
admitted when its budget is unused, so one large request is never starved.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from rlaif.rewards.protocol import RequestError

MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60


class Budget:
    """A capacity shared by concurrent requests; ``hold`` reserves part of it."""

    def __init__(self, what: str, capacity: float):
        self.what = what
        self.capacity = capacity
        self.used = 0.0

    @contextmanager
    def hold(self, amount: float, retry_after: int) -> Iterator[None]:
        """Reserve ``amount`` for the block, or raise RequestError 503 when it does not fit."""
        if self.used > 0 and self.used + amount > self.capacity:
            raise RequestError(503, f"server busy: {self.what} {self.used:g} of {self.capacity:g} "
                                    f"in use, this request needs {amount:g}; retry later",
                               retry_after=retry_after)
        self.used += amount
        try:
            yield
        finally:
            self.used -= amount


def retry_after_s(queued_audio_s: float, audio_rate: float | None) -> int:
    """Seconds until the queue has likely drained: queued audio over the measured scoring
    rate (audio seconds per model second), clamped to a useful range."""
    if not audio_rate:
        return MIN_RETRY_AFTER_S
    wait = math.ceil(queued_audio_s / audio_rate)
    return max(MIN_RETRY_AFTER_S, min(MAX_RETRY_AFTER_S, wait))
