"""Step-time breakdown of GRPO on this machine, printed as one table.

Rows: the quickstart (prosody-lm + espeak-ng) with reward scoring overlapped with
generation and without, the quickstart rendering one sample at a time (as before
trainer/rendering.py), and a tiny codec-lm (random Llama + DAC) with overlap. The reward
servers are the quickstart's real ones (Whisper tiny.en, acoustic judge, DNSMOS), started
as local processes exactly as ``rlaif run`` starts them. The first step of each run is
left out of the means (warm-up).

    .venv/bin/python benchmarks/grpo_step_breakdown.py [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from rlaif.api.models import RLAIFJob, RLAIFJobSpec
from rlaif.api.validation import load_job
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.reward_client import RewardClient
from rlaif.runner import start_reward_servers, wait_ready
from rlaif.trainer.distributed import free_port, init_distributed
from rlaif.trainer.grpo_algorithm import build_algorithm
from rlaif.trainer.loop import TrainingLoop, seed_everything
from rlaif.trainer.policies.prosody_lm import ProsodyLM
from rlaif.trainer.policies.tiny import write_tiny_model_dirs

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("generate", "reward_wait", "update", "other")


def run_case(name: str, config: TrainerConfig, endpoints: list[RewardEndpoint],
             overlap: bool) -> dict[str, float | str]:
    ctx = init_distributed()
    seed_everything(config.spec.seed)
    algorithm = build_algorithm(config, ctx.rank, ctx.world_size)
    with RewardClient(endpoints) as client:
        TrainingLoop(config, ctx, algorithm, client, overlap=overlap).run()
    records = [json.loads(x) for x in
               (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()][1:]
    row: dict[str, float | str] = {"case": name, "overlap": "on" if overlap else "off"}
    for col in COLUMNS:
        row[col] = float(np.mean([r[f"time_{col}"] for r in records]))
    row["step_s"] = float(np.mean([r["step_seconds"] for r in records]))
    row["samples_per_s"] = float(np.mean([r["samples_per_second"] for r in records]))
    return row


def bench_spec(job: RLAIFJob, steps: int) -> RLAIFJobSpec:
    """The job's spec for a timing run: ``steps`` steps, no checkpoints or held-out
    evaluations (the training step only), ZeRO stage 0 (one rank)."""
    spec = job.spec.model_copy(deep=True)
    spec.steps, spec.checkpoint.every_steps = steps, 10**6
    spec.evaluation = None
    spec.trainer.deepspeed.zero_stage = 0
    return spec


def bench_config(spec: RLAIFJobSpec, endpoints: list[RewardEndpoint], out: Path) -> TrainerConfig:
    """The trainer's config for ``spec`` writing under ``out`` (data paths as in examples/)."""
    return TrainerConfig(job_name="bench", spec=spec, rewards=endpoints,
                         output_dir=str(out / "out"), checkpoint_dir=str(out / "ckpt"),
                         metrics_port=free_port(), base_dir=str(REPO / "examples"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    job = load_job(REPO / "examples" / "quickstart-cpu.yaml")
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-"))
    servers, endpoints = start_reward_servers(job, tmp)
    try:
        wait_ready(servers, endpoints, 600)
        rows = []
        cases = [("quickstart prosody-lm", True), ("quickstart prosody-lm", False),
                 ("prosody-lm inline render", True), ("tiny codec-lm", True)]
        for i, (name, overlap) in enumerate(cases):
            ProsodyLM.render_in_threads = name != "prosody-lm inline render"
            spec = bench_spec(job, args.steps)
            if name.startswith("tiny codec-lm"):
                write_tiny_model_dirs(tmp / "lm", tmp / "codec")
                spec.policy = spec.policy.model_copy(update={
                    "kind": "codec-lm", "model": str(tmp / "lm"), "codec": str(tmp / "codec")})
                spec.grpo.max_new_tokens = 200  # 100 frames of 2 codebooks: 0.2 s of audio
            rows.append(run_case(name, bench_config(spec, endpoints, tmp / f"run{i}"),
                                 endpoints, overlap))
    finally:
        for s in servers:
            s.stop()
    samples = job.spec.grpo.batch_size * job.spec.grpo.group_size
    print(f"\nGRPO step-time breakdown, seconds per step (mean of steps 2..{args.steps}, "
          f"{samples} samples per step, 1 rank)")
    header = f"{'case':24} {'overlap':7} " + " ".join(f"{c:>11}" for c in COLUMNS) + \
        f" {'step_s':>7} {'samples/s':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:24} {r['overlap']:7} " +
              " ".join(f"{r[c]:11.2f}" for c in COLUMNS) +
              f" {r['step_s']:7.2f} {r['samples_per_s']:9.2f}")


if __name__ == "__main__":
    main()
