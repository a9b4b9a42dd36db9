"""Reward-server throughput: asr and mos servers on CPU, 1 and 16 concurrent clients, against
the same scorers called one request at a time without batching. Prints one table.

    .venv/bin/python benchmarks/rewards_throughput.py [--requests 32] [--max-batch 16]

Each request carries one espeak-ng utterance (the trainer's per-sample case). Columns: audio
seconds scored per wall second, p50/p95 request latency, mean batch size per model call.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf

from rlaif.audio import encode_pcm16, resample
from rlaif.modelref import resolve
from rlaif.rewards.scoring import ScoreInput, prepare
from rlaif.rewards.server import ServerSettings, build_scorer

SENTENCES = [
    "The committee approved the new budget after a long debate.",
    "Could you send me the report before Friday afternoon?",
    "Rain is expected across the northern hills tonight.",
    "She walked to the station and caught the early train.",
]


def utterances(n: int) -> list[tuple[str, np.ndarray]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            text = SENTENCES[i % len(SENTENCES)]
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), "-s", str(130 + 10 * (i % 5)), text],
                           check=True)
            audio, sr = sf.read(wav, dtype="float32")
            out.append((text, resample(audio, sr)))
    return out


def start_server(kind: str, model: str, port: int, max_batch: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "reward", "serve", "--kind", kind,
                             "--model", model, "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--max-batch", str(max_batch),
                             "--max-wait-ms", "10"], stderr=subprocess.DEVNULL)
    for _ in range(1200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} server did not become ready")


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)


async def drive(url: str, data: list[tuple[str, np.ndarray]], clients: int) -> list[float]:
    """``clients`` concurrent loops, each posting one item per request; returns latencies."""
    bodies = [{"items": [{"id": str(i), "text": t, "labels": {},
                          "audio": {"sampleRate": 16000, "pcm16": encode_pcm16(a)}}]}
              for i, (t, a) in enumerate(data)]
    queue = list(range(len(bodies)))
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while queue:
                body = bodies[queue.pop()]
                start = time.perf_counter()
                async with session.post(url + "/v1/score", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.json()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


def row(name: str, audio_s: float, wall: float, lat: list[float], batch: float) -> str:
    p50, p95 = np.percentile(lat, 50), np.percentile(lat, 95)
    return (f"| {name:<28} | {audio_s / wall:8.2f} | {p50 * 1000:8.0f} | {p95 * 1000:8.0f} | "
            f"{batch:6.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()
    data = utterances(args.requests)
    audio_s = sum(len(a) for _, a in data) / 16000
    print(f"{args.requests} utterances, {audio_s:.1f} s of audio, "
          f"mean {audio_s / args.requests:.2f} s\n")
    print("| setup                        | audio s/s |   p50 ms |   p95 ms | batch |")
    print("| ---------------------------- | --------- | -------- | -------- | ----- |")
    for kind, model in (("asr", "builtin:whisper-tiny.en"), ("mos", "builtin:dnsmos")):
        scorer = build_scorer(ServerSettings(kind=kind, model=model, device="cpu"))
        prepare(scorer)
        lat = []
        start = time.perf_counter()
        for i, (text, audio) in enumerate(data):
            t0 = time.perf_counter()
            scorer.score_batch([ScoreInput(str(i), audio, text)])
            lat.append(time.perf_counter() - t0)
        print(row(f"{kind} direct, unbatched", audio_s, time.perf_counter() - start, lat, 1.0))
        del scorer
        port = 18000 + (0 if kind == "asr" else 1)
        url = f"http://127.0.0.1:{port}"
        proc = start_server(kind, model, port, args.max_batch)
        try:
            for clients in (1, 16):
                n0 = metric(url, "rlaif_reward_batch_size_count")
                s0 = metric(url, "rlaif_reward_batch_size_sum")
                start = time.perf_counter()
                lat = asyncio.run(drive(url, data, clients))
                wall = time.perf_counter() - start
                batch = (metric(url, "rlaif_reward_batch_size_sum") - s0) / max(
                    1.0, metric(url, "rlaif_reward_batch_size_count") - n0)
                print(row(f"{kind} server, {clients} client(s)", audio_s, wall, lat, batch))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\nmodels: asr {resolve('builtin:whisper-tiny.en')}, mos {resolve('builtin:dnsmos')}")


if __name__ == "__main__":
    main()
