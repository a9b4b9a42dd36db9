"""DLPO against its baselines on the tiny WaveGrad 2 with the real DNSMOS reward: how far
each objective raises MOS, and how far it moves the generator (the fixed-batch diffusion
loss), from the same start and seed.

    .venv/bin/python benchmarks/dlpo_objectives.py [--objectives dlpo ddpo] [--steps 12]

DNSMOS runs in this process (the scorer the MOS server wraps), prompts cycle through
examples/data/dlpo-prompts.jsonl, settings are those of examples/dlpo-wavegrad2-cpu.yaml.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rlaif import modelref
from rlaif.api.models import RLAIFJobSpec
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.data import load_prompts
from rlaif.rewards.mos import MosScorer
from rlaif.rewards.scoring import ScoreInput, prepare
from rlaif.trainer.distributed import init_distributed
from rlaif.trainer.dlpo import build_algorithm

REPO = Path(__file__).resolve().parent.parent
PROMPTS = REPO / "examples" / "data" / "dlpo-prompts.jsonl"


def run(objective: str, args: argparse.Namespace, scorer: MosScorer) -> dict[str, float]:
    spec = RLAIFJobSpec.model_validate({
        "algorithm": "dlpo", "seed": 0,
        "policy": {"kind": "wavegrad2", "model": args.model, "finetune": "full"},
        "data": {"prompts": str(PROMPTS), "groundTruth": args.model},
        "rewards": [{"name": "mos", "kind": "mos", "model": "builtin:dnsmos", "weight": 1}],
        "dlpo": {"objective": objective, "groupSize": 4, "denoisingSteps": 6,
                 "learningRate": args.lr, "rewardScale": 5.0,
                 "diffusionLossCoef": args.diffusion_loss_coef},
        "trainer": {"deepspeed": {"zeroStage": 0, "gradientClipping": 1.0}}})
    config = TrainerConfig(job_name=objective, spec=spec, output_dir="/tmp/unused",
                           rewards=[RewardEndpoint(name="mos", url="http://unused", weight=1)])
    torch.manual_seed(0)
    algo = build_algorithm(config, 0, 1)
    prompts = load_prompts(PROMPTS)
    mos, loss = [], []
    t0 = time.perf_counter()
    for step in range(args.steps):
        rollout = algo.rollout([prompts[step % len(prompts)]])
        results = scorer.score_batch([ScoreInput(str(i), a) for i, a in enumerate(rollout.audio)])
        stats = algo.update(rollout, np.array([r.score for r in results]))
        mos.append(float(np.mean([r.details["ovrl"] for r in results])))
        loss.append(stats["diffusion_loss"])
    return {"mos_first": mos[0], "mos_last4": float(np.mean(mos[-4:])), "mos_max": max(mos),
            "dl_first": loss[0], "dl_last_x": loss[-1] / loss[0], "dl_max_x": max(loss) / loss[0],
            "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["dlpo", "ddpo"],
                        choices=["dlpo", "ddpo", "dpok", "klinr", "rwr"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", default="builtin:wavegrad2-tiny")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--diffusion-loss-coef", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    init_distributed()
    scorer = MosScorer(modelref.resolve("builtin:dnsmos"), "cpu")
    prepare(scorer)
    print(f"{args.steps} steps, lr {args.lr:g}, diffusionLossCoef {args.diffusion_loss_coef:g}"
          f" (dlpo only), G=4, 6 denoising steps, model {args.model}")
    print(f"{'objective':<10}{'MOS step 1':>11}{'MOS last 4':>11}{'MOS max':>9}"
          f"{'diff. loss 1':>13}{'last/first':>11}{'max/first':>10}{'seconds':>9}")
    for objective in args.objectives:
        r = run(objective, args, scorer)
        print(f"{objective:<10}{r['mos_first']:>11.3f}{r['mos_last4']:>11.3f}"
              f"{r['mos_max']:>9.3f}{r['dl_first']:>13.4f}{r['dl_last_x']:>11.2f}"
              f"{r['dl_max_x']:>10.2f}{r['seconds']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
