"""espeak-ng rendering through libespeak-ng: the CLI's audio sample for sample, whatever was
rendered before and however many threads render at once; a dead worker of either mode is
replaced; then RenderQueue with real renders:
threads give the same audio in the same order as rendering inline, renders overlap, a group is
handed over once the next one is queued, and a renderer's error reaches the rollout."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rlaif.audio import resample
from rlaif.constants import SAMPLE_RATE
from rlaif.data import Prompt
from rlaif.trainer import audio, espeak_worker
from rlaif.trainer.audio import SpeechSynthesisError, espeak_phonemes, espeak_ssml
from rlaif.trainer.rendering import RenderQueue

SSML = [
    '<speak><prosody rate="50%" pitch="+20%" range="150%" volume="80%">Hello there '
    '<break time="350ms"/> my friend?</prosody></speak>',
    '<speak><prosody rate="175%" pitch="-40%">Good morning.</prosody></speak>',
    "<speak>Where is it?</speak>",
    '<speak><prosody rate="50%">never closed',  # malformed: the prosody must not leak out
    "<<<>>> & <foo",  # malformed
    '<speak><voice name="en-gb">Hi</voice></speak>',  # switches the library's voice
    "Plain text after a voice change.",
]
GROUPS = [([[120], [160]], Prompt("Good morning.")), ([[140], [180]], Prompt("Where is it?")),
          ([[200], [100]], Prompt("Thank you."))]


def espeak_cli(ssml: str) -> np.ndarray:
    """The reference: ``espeak-ng -m -v en-us -w`` in a fresh process, read as before."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-m", "-v", "en-us", "-w", str(wav), "--stdin"],
                       input=ssml.encode(), check=True, timeout=60)
        audio, rate = sf.read(wav, dtype="float32")
    return resample(audio, rate)


def test_renders_are_the_cli_audio_sample_for_sample() -> None:
    """Twice over, so every render follows others (the library keeps state between them)."""
    for ssml in SSML * 2:
        wave = espeak_ssml(ssml)
        assert wave.dtype == np.float32 and len(wave) > SAMPLE_RATE // 2
        assert np.array_equal(wave, espeak_cli(ssml)), ssml


def test_renders_from_several_threads_at_once_are_the_one_at_a_time_audio() -> None:
    alone = [espeak_ssml(ssml) for ssml in SSML]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(espeak_ssml, SSML * 3))
    assert all(np.array_equal(wave, alone[i % len(SSML)]) for i, wave in enumerate(together))


@pytest.mark.parametrize("ssml", ["", "   ", "<speak></speak>"])
def test_empty_text_renders_a_moment_of_silence(ssml: str) -> None:
    wave = espeak_ssml(ssml)
    assert 0 < len(wave) < SAMPLE_RATE // 50 and not wave.any()


def test_an_unknown_voice_is_a_clear_error_and_leaves_nothing_behind() -> None:
    with pytest.raises(SpeechSynthesisError, match="no voice 'xx-nowhere'"):
        espeak_ssml("Hello.", voice="xx-nowhere")
    assert np.array_equal(espeak_ssml(SSML[2]), espeak_cli(SSML[2]))


@pytest.mark.parametrize(("mode", "render"), [
    (espeak_worker.SSML, espeak_ssml),
    (espeak_worker.PHONEMES, lambda text: espeak_phonemes(text)[0])])
def test_a_worker_that_died_is_replaced(mode: str, render: Callable[[str], np.ndarray]
                                        ) -> None:
    before = render("Where is it?")
    idle = idle_workers(mode)
    assert idle
    for worker in idle:  # as the OOM killer would
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
    assert np.array_equal(render("Where is it?"), before)
    assert all(worker.proc.poll() is None for worker in idle_workers(mode))


def idle_workers(mode: str) -> list[audio._Worker]:
    """The ``mode`` pool's idle workers (put back in the pool)."""
    pool, workers = audio._pools[mode], []
    while not pool.idle.empty():
        workers.append(pool.idle.get_nowait())
    for worker in workers:
        pool.idle.put(worker)
    return workers


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
