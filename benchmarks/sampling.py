"""Sampling a GRPO step's groups one prompt at a time against all at once, and the rollout
with espeak-ng rendering, on the quickstart's prosody-lm policy (LoRA, float32, CPU).

Per step: ``--prompts`` prompts x 4 samples, at most ``--tokens`` new tokens; the two ways
interleaved, median and quartiles over ``--reps`` steps after 3 of warm-up:

    .venv/bin/python benchmarks/sampling.py [--prompts 2] [--tokens 16] [--reps 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlaif.api.models import LoraSpec
from rlaif.data import Prompt, load_prompts
from rlaif.trainer.policies.base import Completions
from rlaif.trainer.policies.prosody_lm import ProsodyLM, builtin_model_dir
from rlaif.trainer.rendering import RenderQueue

REPO = Path(__file__).resolve().parent.parent
GROUP = 4
LORA = LoraSpec(r=8, alpha=32, dropout=0.0, target_modules=["q_proj", "v_proj", "lm_head"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2, help="prompts (groups) per step")
    parser.add_argument("--tokens", type=int, default=16, help="maxNewTokens")
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    policy = ProsodyLM(builtin_model_dir(), "lora", LORA, torch.device("cpu"), torch.float32)
    prompts = load_prompts(REPO / "examples" / "data" / "quickstart-prompts.jsonl")

    def one_by_one(step: Sequence[Prompt]) -> list[Completions]:
        return [policy.sample(p, GROUP, args.tokens) for p in step]

    def batched(step: Sequence[Prompt]) -> list[Completions]:
        return policy.sample_groups(step, GROUP, args.tokens)

    def rollout(sample: Callable[[Sequence[Prompt]], list[Completions]]
                ) -> Callable[[Sequence[Prompt]], list[np.ndarray]]:
        def run(step: Sequence[Prompt]) -> list[np.ndarray]:
            audio: list[np.ndarray] = []
            with RenderQueue.of(policy, audio) as renders:
                for prompt, done in zip(step, sample(step), strict=True):
                    renders.add(policy.completion_tokens(done.ids, done.mask), prompt)
            return audio
        return run

    ways: dict[str, Callable[[Sequence[Prompt]], object]] = {
        "sample, one prompt at a time": one_by_one, "sample, all prompts at once": batched,
        "rollout, one prompt at a time": rollout(one_by_one),
        "rollout, all prompts at once": rollout(batched)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for i in range(args.reps + 3):
        step = [prompts[(i * args.prompts + j) % len(prompts)] for j in range(args.prompts)]
        for name, way in ways.items():
            start = time.perf_counter()
            way(step)
            if i >= 3:
                times[name].append(1000 * (time.perf_counter() - start))
    print(f"# {args.prompts} prompts x {GROUP} samples, maxNewTokens {args.tokens}, "
          f"{args.reps} steps, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| what | median ms | p25 | p75 |\n| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {np.percentile(values, 25):.1f} "
              f"| {np.percentile(values, 75):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
