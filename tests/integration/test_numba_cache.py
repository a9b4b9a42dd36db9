"""Acoustic judges started together share librosa's numba cache safely: all become ready on an
empty cache, a judge started afterwards loads what they compiled, and a cache left by a judge
killed while compiling heals (issue: concurrent compiles once paired one process's index with
another's code, and every later judge died with SIGSEGV)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rlaif.audio import encode_pcm16
from rlaif.numba_cache import ENV, MARKER
from tests.integration.reward_support import SENTENCE, free_port, post, speak, wait_ready

pytestmark = pytest.mark.slow


class Judge:
    """``rlaif reward serve --kind judge --model builtin:acoustic`` as its own process."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rlaif.cli", "reward", "serve", "--kind", "judge",
                 "--model", "builtin:acoustic", "--host", "127.0.0.1", "--port",
                 str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        try:
            wait_ready(self.url, timeout_s=300)
        except TimeoutError:
            raise AssertionError(f"judge exited {self.proc.poll()}:\n"
                                 f"{self.log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """An empty cache root for the judges (RLAIF_CACHE, with NUMBA_CACHE_DIR left unset)."""
    return tmp_path / "cache"


@pytest.fixture
def start_judge(tmp_path: Path, cache: Path) -> Iterator[Callable[[], Judge]]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(RLAIF_CACHE=str(cache), PYTHONUNBUFFERED="1")
    started: list[Judge] = []

    def start() -> Judge:
        started.append(Judge(env, tmp_path / f"judge{len(started)}.log"))
        return started[-1]

    yield start
    for judge in started:
        judge.stop()


def judge_speech(judge: Judge) -> dict:
    audio = speak(SENTENCE, rate=170)
    body = {"items": [{"id": "s", "audio": {"sampleRate": 16000, "pcm16": encode_pcm16(audio)},
                       "text": SENTENCE, "labels": {"speechRate": "Medium Fast",
                                                    "intonation": "Declarative"}}]}
    status, answer = post(judge.url, json.dumps(body).encode())
    assert status == 200, answer
    (score,) = answer["scores"]
    return score


def test_judges_started_together_on_an_empty_cache_are_all_ready(start_judge, cache) -> None:
    first = [start_judge() for _ in range(4)]
    for judge in first:
        judge.wait_ready()
    fifth = start_judge()
    fifth.wait_ready()
    score = judge_speech(fifth)
    assert 0.0 <= score["score"] <= 1.0 and score["details"]["syllablesPerSecond"] > 2.0
    compiled = list((cache / "numba").rglob("*.nbi"))
    assert compiled, "the kernels were not cached under RLAIF_CACHE/numba"
    assert not (cache / "numba" / MARKER).exists()


def test_a_cache_left_by_a_judge_killed_while_compiling_heals(start_judge, cache) -> None:
    victim = start_judge()
    marker = cache / "numba" / MARKER
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline and victim.proc.poll() is None, "never compiled"
        time.sleep(0.05)
    leftover = cache / "numba" / "left-by-the-victim.nbi"
    leftover.write_bytes(b"not a numba index")
    victim.stop()  # SIGKILL while holding the lock: the marker stays
    survivor = start_judge()
    survivor.wait_ready()
    assert not leftover.exists() and not marker.exists()
    assert judge_speech(survivor)["details"]["syllablesPerSecond"] > 2.0
