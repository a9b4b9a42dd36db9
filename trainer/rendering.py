"""Rendering a rollout's completions to audio, a group's samples at once.

espeak-ng renders in worker processes (trainer/audio.py): the Python thread only waits on
a pipe, so several renders run at once on a pool of threads (one per core) while the main
thread goes on (queueing the next group; with groups sampled one by one, sampling it).
Samples are still handed over in rollout order, each group as soon as all of it is
rendered, so its scoring starts while later groups render. A policy whose renderer is
Python/torch work (codec decoders) renders inline: threads would only contend for the GIL
and the intra-op threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import numpy as np

from rlaif.data import Prompt
from rlaif.trainer.algorithm import AudioSink

Render = Callable[[list[int], Prompt], np.ndarray]


class RenderQueue:
    """Renders groups of completions, in threads when ``threaded``; ``audio`` receives the
    waves in order (and ``on_audio`` is called for each), at the latest when the queue
    closes."""

    def __init__(self, render: Render, threaded: bool, audio: list[np.ndarray],
                 on_audio: AudioSink | None = None):
        self.render, self.audio, self.on_audio = render, audio, on_audio
        self.pool = ThreadPoolExecutor(os.cpu_count() or 1, "render") if threaded else None
        self.pending: list[Future[np.ndarray]] = []

    def add(self, completions: list[list[int]], prompt: Prompt) -> None:
        """Queue one group; hand over the groups queued before it once they are rendered."""
        if self.pool is None:
            for tokens in completions:
                self._deliver(self.render(tokens, prompt))
            return
        earlier, self.pending = self.pending, [self.pool.submit(self.render, tokens, prompt)
                                               for tokens in completions]
        for future in earlier:
            self._deliver(future.result())

    def _deliver(self, wave: np.ndarray) -> None:
        if self.on_audio is not None:
            self.on_audio(len(self.audio), wave)
        self.audio.append(wave)

    def __enter__(self) -> RenderQueue:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.pool is None:
            return
        try:
            if kind is None:
                for future in self.pending:
                    self._deliver(future.result())
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
