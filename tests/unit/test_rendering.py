"""RenderQueue with real espeak-ng renders: threads give the same audio in the same order as
rendering inline, renders overlap, a group is handed over once the next one is queued, and a
renderer's error reaches the rollout."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from rlaif.data import Prompt
from rlaif.trainer.audio import SpeechSynthesisError, espeak_ssml
from rlaif.trainer.rendering import RenderQueue

GROUPS = [([[120], [160]], Prompt("Good morning.")), ([[140], [180]], Prompt("Where is it?")),
          ([[200], [100]], Prompt("Thank you."))]


class Espeak:
    """Renders ``<prosody rate=ids[0]%>`` of the prompt's text, recording when it ran."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def __call__(self, ids: list[int], prompt: Prompt) -> np.ndarray:
        start = time.monotonic()
        wave = espeak_ssml(f'<speak><prosody rate="{ids[0]}%">{prompt.text}</prosody></speak>')
        with self.lock:
            self.spans.append((start, time.monotonic()))
        return wave


def render_all(threaded: bool) -> tuple[list[np.ndarray], list[int], Espeak]:
    audio: list[np.ndarray] = []
    seen: list[int] = []
    render = Espeak()
    with RenderQueue(render, threaded, audio, lambda i, wave: seen.append(i)) as queue:
        for completions, prompt in GROUPS:
            queue.add(completions, prompt)
    return audio, seen, render


def test_threads_render_the_same_audio_in_order_and_at_once() -> None:
    inline, inline_seen, _ = render_all(threaded=False)
    threaded, seen, render = render_all(threaded=True)
    assert seen == inline_seen == list(range(6))
    assert len(threaded) == 6 and all(np.array_equal(a, b) for a, b in zip(threaded, inline,
                                                                           strict=True))
    assert len(inline[0]) > len(inline[1])  # slower rate, longer audio: renders not mixed up
    spans = sorted(render.spans)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def test_a_group_is_handed_over_when_the_next_is_queued() -> None:
    audio: list[np.ndarray] = []
    with RenderQueue(Espeak(), True, audio) as queue:
        queue.add(*GROUPS[0])
        assert audio == []  # still rendering while the caller samples the next group
        queue.add(*GROUPS[1])
        assert len(audio) == 2
    assert len(audio) == 4


def test_a_failed_render_reaches_the_caller() -> None:
    def broken(ids: list[int], prompt: Prompt) -> np.ndarray:
        raise SpeechSynthesisError("espeak-ng failed (1): out of memory")

    with pytest.raises(SpeechSynthesisError, match="out of memory"), \
            RenderQueue(broken, True, []) as queue:
        queue.add(*GROUPS[0])
