"""A trainer's reward wait with one and with two replicas of the quickstart's ASR server.

Real Whisper tiny.en servers started as ``rlaif run`` starts them (one thread each, as one
GPU or one pinned core per replica would be), real espeak-ng clips of ~3 s; a "step" submits
two groups of four clips at once, as the trainer does, and waits for all scores. The client
spreads every submission over the replicas (rlaif.reward_replicas). Prints seconds per step
and the speed-up.

    .venv/bin/python benchmarks/reward_replicas.py [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rlaif.api.validation import load_job
from rlaif.reward_client import RewardClient, ScoreItem
from rlaif.runner import start_reward_servers, wait_ready
from rlaif.trainer.audio import espeak_ssml

REPO = Path(__file__).resolve().parent.parent
SENTENCES = ["The committee approved the new budget after a long debate.",
             "Please bring the blue folder to the meeting room upstairs.",
             "Rain is expected over the northern hills by late afternoon.",
             "She told me the train would leave a little after nine."]


def seconds_per_step(replicas: int, steps: int, groups: list[list[ScoreItem]]) -> float:
    job = load_job(REPO / "examples" / "quickstart-cpu.yaml")
    asr = next(r for r in job.spec.rewards if r.kind == "asr")
    job.spec.rewards = [asr.model_copy(update={"replicas": replicas, "weight": 1.0})]
    job.spec.evaluation = None
    out = Path(tempfile.mkdtemp(prefix="rlaif-bench-replicas-"))
    servers, endpoints = start_reward_servers(job, out)
    try:
        wait_ready(servers, endpoints, 600)
        with RewardClient(endpoints) as client:
            client.score(groups[0])  # warm-up
            start = time.perf_counter()
            for _ in range(steps):
                for future in [client.submit(g) for g in groups]:
                    future.result()
            return (time.perf_counter() - start) / steps
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per replica (the servers inherit it)
    clips = [espeak_ssml(s) for s in SENTENCES * 2]
    items = [ScoreItem(id=f"c{i}", audio=a, text=(SENTENCES * 2)[i])
             for i, a in enumerate(clips)]
    groups = [items[:4], items[4:]]
    one = seconds_per_step(1, args.steps, groups)
    two = seconds_per_step(2, args.steps, groups)
    print(f"{'replicas':>8} {'s/step':>8} {'speed-up':>8}")
    print(f"{1:>8} {one:>8.3f} {1.0:>8.2f}")
    print(f"{2:>8} {two:>8.3f} {one / two:>8.2f}")


if __name__ == "__main__":
    main()
