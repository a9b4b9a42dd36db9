"""Reward-server load and abuse: throughput, p95 and server RSS under many clients, with and
without backpressure, under concurrent oversized bodies, and a hostile request mix.

    .venv/bin/python benchmarks/rewards_load.py [--kind asr] [--clients 16,64,200]
        [--oversized 128] [--hostile 2000]

The server is the real CLI (``rlaif reward serve``) in its own process, so its RSS is read
from /proc (current and peak). Each client sends one request of ``--items`` espeak-ng
utterances. "with backpressure" uses ``--max-queue-seconds`` (default 60 s of audio), "without"
an unbounded queue. A refused request (503) counts in the refused column, not in the
latencies. Oversized: concurrent bodies of ``--oversized-mb`` MB, each one item of far too
much audio (every answer must be 413, 503 or a closed connection, never a 5xx). Hostile: a
mix of malformed requests and hang-ups, then a clean probe whose score must not change.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlaif.audio import encode_pcm16
from tests.integration.reward_support import free_port, speak, wait_ready

SENTENCES = ["The committee approved the new budget after a long debate.",
             "Could you send me the report before Friday afternoon?",
             "Rain is expected across the northern hills tonight."]
MODELS = {"asr": "builtin:whisper-tiny.en", "mos": "builtin:dnsmos", "judge": "builtin:acoustic"}
LABELS = {"speechRate": "Medium Fast", "intonation": "Declarative"}


class Server:
    """``rlaif reward serve`` in a subprocess; ``rss_mb`` reads its memory from /proc."""

    def __init__(self, kind: str, extra: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlaif.cli", "reward", "serve", "--kind", kind, "--model",
             MODELS[kind], "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
             *extra], stderr=subprocess.PIPE, text=True)
        wait_ready(self.url, timeout_s=600)

    def rss_mb(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def stop(self) -> tuple[int, str]:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


def item(i: int, text: str, audio: np.ndarray) -> dict:
    return {"id": f"u{i}", "text": text, "labels": LABELS,
            "audio": {"sampleRate": 16000, "pcm16": encode_pcm16(audio)}}


async def burst(url: str, bodies: list[bytes]) -> tuple[list[float], Counter[str], float]:
    """All bodies at once, one client each: latencies of the 200s, statuses, wall time."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(body: bytes) -> None:
            start = time.perf_counter()
            try:
                async with session.post(url + "/v1/score", data=body, headers={
                        "Content-Type": "application/json"}) as resp:
                    await resp.read()
                    statuses[str(resp.status)] += 1
                    if resp.status == 200:
                        latencies.append(time.perf_counter() - start)
            except (aiohttp.ClientError, OSError) as exc:
                statuses[f"closed ({type(exc).__name__})"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
    return latencies, statuses, time.perf_counter() - start


def sample_rss(server: Server, stop: asyncio.Event, peak: list[float]) -> asyncio.Task[None]:
    async def loop() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.rss_mb())
            await asyncio.sleep(0.05)
    return asyncio.get_running_loop().create_task(loop())


async def measured_burst(server: Server, bodies: list[bytes]) -> tuple[
        list[float], Counter[str], float, float]:
    stop, peak = asyncio.Event(), [server.rss_mb()]
    sampler = sample_rss(server, stop, peak)
    latencies, statuses, wall = await burst(server.url, bodies)
    stop.set()
    await sampler
    return latencies, statuses, wall, peak[0]


def load_rows(kind: str, clients: list[int], items: int, queue_s: float) -> None:
    speech = [(t, speak(t, rate=150 + 10 * i)) for i, t in enumerate(SENTENCES)]
    bodies = [json.dumps({"items": [item(k, *speech[(c + k) % len(speech)])
                                    for k in range(items)]}).encode()
              for c in range(max(clients))]
    per_request = sum(len(a) for _, a in speech) / len(speech) / 16000 * items
    print(f"\n{kind}: one request = {items} utterance(s), {per_request:.1f} s of audio\n")
    print("| backpressure | clients | audio s/s | p50 s | p95 s | 200 | refused | other |"
          " RSS peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, limit in ((f"queue {queue_s:g} s", queue_s), ("none", 1e12)):
        server = Server(kind, ["--max-queue-seconds", str(limit)])
        try:
            for n in clients:
                lat, statuses, wall, peak = asyncio.run(measured_burst(server, bodies[:n]))
                ok = statuses.pop("200", 0)
                refused = statuses.pop("503", 0)
                p50, p95 = (np.percentile(lat, 50), np.percentile(lat, 95)) if lat else (0, 0)
                print(f"| {label} | {n} | {ok * per_request / wall:.2f} | {p50:.1f} | {p95:.1f} |"
                      f" {ok} | {refused} | {sum(statuses.values())} | {peak:.0f} |")
        finally:
            server.stop()


def oversized_row(kind: str, count: int, megabytes: int) -> None:
    pcm = base64.b64encode(bytes(megabytes * 3 * 2**20 // 4)).decode()
    body = json.dumps({"items": [{"id": "big", "audio": {"sampleRate": 16000,
                                                         "pcm16": pcm}}]}).encode()
    server = Server(kind, [])
    try:
        before = server.rss_mb()
        _, statuses, wall, peak = asyncio.run(measured_burst(server, [body] * count))
        after = server.rss_mb()
        print(f"\n{kind}: {count} concurrent bodies of {len(body) / 2**20:.0f} MiB in {wall:.1f} s:"
              f" {dict(statuses)}; server RSS {before:.0f} MB before, peak {peak:.0f} MB,"
              f" {after:.0f} MB after")
    finally:
        server.stop()


HOSTILE: list[Callable[[bytes], tuple[bytes, dict[str, str]]]] = [
    lambda good: (b"[" * 10000, {}),
    lambda good: (b'{"items": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}),
    lambda good: (good, {"Content-Encoding": "gzip"}),
    lambda good: (good, {"Content-Encoding": "br"}),
    lambda good: (b"\xff\xfe" + good, {}),
    lambda good: (good.replace(b'"sampleRate": 16000', b'"sampleRate": 1000'), {}),
    lambda good: (good.replace(b'"sampleRate": 16000', b'"sampleRate": [[[1]]]'), {}),
    lambda good: (good.replace(b'"text": ', b'"text": 1e999, "x": '), {}),
    lambda good: (good.replace(b'"labels": {', b'"labels": {"emotion": {"a": [1]}, '), {}),
    lambda good: (json.dumps({"items": [{"id": str(i)} for i in range(65)]}).encode(), {}),
    lambda good: (good[: len(good) // 2], {}),
]


async def hostile(url: str, good: bytes, count: int) -> Counter[str]:
    statuses: Counter[str] = Counter()
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one(i: int) -> None:
            body, headers = HOSTILE[i % len(HOSTILE)](good)
            async with sem:
                if i % 50 == 49:  # a client that hangs up mid-body
                    _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":")[-1]))
                    writer.write(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 99999"
                                 b"\r\n\r\n" + body[:500])
                    await writer.drain()
                    writer.close()
                    statuses["hang-up"] += 1
                    return
                async with session.post(url + "/v1/score", data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[str(resp.status)] += 1

        await asyncio.gather(*(one(i) for i in range(count)))
    return statuses


def hostile_row(kind: str, count: int) -> None:
    text = SENTENCES[0]
    good = json.dumps({"items": [item(0, text, speak(text))]}).encode()
    server = Server(kind, [])
    try:
        probe = urllib.request.urlopen(urllib.request.Request(server.url + "/v1/score", good))
        before = json.loads(probe.read())["scores"][0]["score"]
        start = time.perf_counter()
        statuses = asyncio.run(hostile(server.url, good, count))
        wall = time.perf_counter() - start
        probe = urllib.request.urlopen(urllib.request.Request(server.url + "/v1/score", good))
        after = json.loads(probe.read())["scores"][0]["score"]
        fives = sum(v for k, v in statuses.items() if k.startswith("5"))
        print(f"\n{kind}: {count} hostile requests in {wall:.1f} s: "
              f"{dict(sorted(statuses.items()))}; 5xx: {fives}; probe score {before:.4f} "
              f"before, {after:.4f} after;"
              f" peak RSS {server.rss_mb('VmHWM'):.0f} MB")
    finally:
        code, err = server.stop()
        print(f"{kind}: exit {code} after SIGTERM; tracebacks logged: {err.count('Traceback')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=sorted(MODELS), default="asr")
    parser.add_argument("--clients", default="16,64,200")
    parser.add_argument("--items", type=int, default=1)
    parser.add_argument("--max-queue-seconds", type=float, default=60.0)
    parser.add_argument("--oversized", type=int, default=128)
    parser.add_argument("--oversized-mb", type=int, default=26)
    parser.add_argument("--hostile", type=int, default=2000)
    parser.add_argument("--skip", default="", help="comma-separated: load,oversized,hostile")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    if "load" not in skip:
        load_rows(args.kind, [int(n) for n in args.clients.split(",")], args.items,
                  args.max_queue_seconds)
    if "oversized" not in skip:
        oversized_row(args.kind, args.oversized, args.oversized_mb)
    if "hostile" not in skip:
        hostile_row(args.kind, args.hostile)


if __name__ == "__main__":
    main()
