"""What every scorer shares: its input, its result, and the interface the server drives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rlaif import numba_cache
from rlaif.constants import SAMPLE_RATE


@dataclass
class ScoreInput:
    """One decoded, validated item: 16 kHz mono float32 audio plus what the request gave."""

    id: str
    audio: np.ndarray
    text: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    reference: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass
class ScoreResult:
    """A score in [0, 1] with the figures behind it, or an item error: the item could not be
    scored (clients count it as NaN, never as 0)."""

    score: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> ScoreResult:
        return cls(error=error)

    @classmethod
    def clipped(cls, value: float, details: dict[str, Any]) -> ScoreResult:
        """``value`` clamped to [0, 1]; NaN (a model's degenerate output) is an item error,
        never a score of 0 that would punish the sample for the model's failure."""
        if math.isnan(value):
            return cls.failed(f"the model's output is NaN: {details}")
        return cls(score=clip01(value), details=details)


class Scorer(Protocol):
    """One reward model. The server calls ``load`` and ``warm_up`` once, then ``score_batch``
    from a single worker thread (never concurrently), off the event loop."""

    def load(self) -> None: ...

    def warm_up(self) -> None:
        """One real inference so the first request does not pay for lazy initialisation."""
        ...

    def check(self, item: ScoreInput) -> str | None:
        """Why this scorer cannot score ``item`` (``"text: ..."``), or None; checked per item
        before batching so one bad item never spoils a batch."""
        ...

    def score_batch(self, items: list[ScoreInput]) -> list[ScoreResult]: ...


def prepare(scorer: Scorer) -> None:
    """``load`` then ``warm_up``, alone among this user's processes: warm-up makes the first
    kernel calls, which compile or load librosa's numba kernels (see rlaif.numba_cache)."""
    with numba_cache.exclusive():
        scorer.load()
        scorer.warm_up()


def clip01(value: float) -> float:
    """Clamp to [0, 1]; NaN (a model's degenerate output) counts as 0."""
    return 0.0 if math.isnan(value) else min(1.0, max(0.0, float(value)))
