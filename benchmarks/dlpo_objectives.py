"""DLPO against its baselines on the tiny WaveGrad 2 with the real DNSMOS reward, over
several seeds: how far each objective raises MOS and how far it moves the generator, both
measured on what it did not train on.

    .venv/bin/python benchmarks/dlpo_objectives.py [--objectives dlpo ddpo] [--seeds 0 1 2]

Settings are examples/dlpo-wavegrad2-cpu.yaml's (flags override lr, diffusionLossCoef,
diffusionLossTarget, rewardScale and innerIterations); training prompts cycle through its
prompts file; DNSMOS runs in this process (the scorer the MOS server wraps). Per run:

- train MOS: DNSMOS overall MOS of the training rollouts (the signal being optimised);
- held-out DNSMOS and PLCMOS: samples of examples/data/dlpo-heldout.jsonl (texts in
  neither the prompts nor the tiny model's corpus), same seeds before and after training;
  PLCMOS (speechmos's, a different model) is not part of the reward;
- diffusion loss: the trainer's fixed-batch probe on the training ground truth (max and last
  over the run, as multiples of step 1), and the same on espeak-ng pairs of the held-out
  texts, which the regulariser never trains on (after / before);
- diverged: chains whose states overflowed, left out of their update (silent audio);
- coef max, skipped: with --diffusion-loss-target, the adaptive diffusion-loss weight's
  largest value and the steps whose reward term it dropped.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlaif import modelref
from rlaif.api.models import RLAIFJobSpec
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.data import Prompt, load_prompts
from rlaif.rewards.mos import MosScorer
from rlaif.rewards.scoring import ScoreInput, prepare
from rlaif.trainer.distributed import init_distributed
from rlaif.trainer.dlpo import DLPOAlgorithm, build_algorithm
from rlaif.trainer.wavegrad2.corpus import Example, read_examples, write_espeak_corpus
from rlaif.trainer.wavegrad2.losses import diffusion_loss

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "dlpo-wavegrad2-cpu.yaml"
HELDOUT = REPO / "examples" / "data" / "dlpo-heldout.jsonl"
SAMPLES_PER_PROMPT = 2
HELDOUT_SEED = 10_000
"""Seeds of the held-out samples: the same before and after training (paired)."""


class Evaluators:
    """DNSMOS (the training reward's model) and PLCMOS (not trained on) on held-out audio."""

    def __init__(self) -> None:
        from speechmos.plcmos import PLCMOS

        self.dnsmos = MosScorer(modelref.resolve("builtin:dnsmos"), "cpu")
        prepare(self.dnsmos)
        self.plcmos = PLCMOS()

    def dnsmos_ovrl(self, audio: list[np.ndarray]) -> list[float]:
        results = self.dnsmos.score_batch([ScoreInput(str(i), a) for i, a in enumerate(audio)])
        return [r.details["ovrl"] for r in results]

    def plcmos_mean(self, audio: list[np.ndarray]) -> float:
        scores = []
        for a in audio:
            np.random.seed(0)  # PLCMOS draws random rater embeddings: the same ones every call
            scores.append(self.plcmos(np.clip(a, -1, 1).astype(np.float32))["plcmos"])
        return float(np.mean(scores))


def spec_for(objective: str, seed: int, args: argparse.Namespace) -> RLAIFJobSpec:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    spec["data"]["prompts"] = str(EXAMPLE.parent / spec["data"]["prompts"])
    spec["seed"] = seed
    spec["dlpo"]["objective"] = objective
    overrides = {"learningRate": args.lr, "diffusionLossCoef": args.diffusion_loss_coef,
                 "rewardScale": args.reward_scale, "innerIterations": args.inner_iterations,
                 "diffusionLossTarget": args.diffusion_loss_target}
    spec["dlpo"].update({k: v for k, v in overrides.items() if v is not None})
    return RLAIFJobSpec.model_validate(spec)


@torch.no_grad()
def heldout_figures(algo: DLPOAlgorithm, prompts: list[Prompt], pairs: list[Example],
                    evaluators: Evaluators) -> dict[str, float]:
    seeds = [HELDOUT_SEED + i for i in range(len(prompts))]
    audio = algo.synthesize(prompts, seeds, SAMPLES_PER_PROMPT, greedy=False)
    loss = diffusion_loss(algo.net, pairs, torch.Generator().manual_seed(HELDOUT_SEED))
    return {"dnsmos": float(np.mean(evaluators.dnsmos_ovrl(audio))),
            "plcmos": evaluators.plcmos_mean(audio), "diffusion_loss": float(loss.total)}


def run(spec: RLAIFJobSpec, steps: int, heldout: list[Prompt], pairs_dir: Path,
        evaluators: Evaluators) -> dict[str, float]:
    config = TrainerConfig(job_name="bench", spec=spec, output_dir="/tmp/unused",
                           rewards=[RewardEndpoint(name="mos", url="http://unused", weight=1)])
    torch.manual_seed(spec.seed)
    algo = build_algorithm(config, 0, 1)
    pairs = read_examples(pairs_dir, algo.net.config)
    prompts = load_prompts(Path(spec.data.prompts))
    t0 = time.perf_counter()
    before = heldout_figures(algo, heldout, pairs, evaluators)
    mos, loss, diverged, coef, skipped = [], [], 0.0, [0.0], 0.0
    for step in range(steps):
        rollout = algo.rollout([prompts[step % len(prompts)]])
        ovrl = evaluators.dnsmos_ovrl(rollout.audio)
        stats = algo.update(rollout, np.clip((np.array(ovrl) - 1) / 4, 0, 1))
        mos.append(float(np.mean(ovrl)))
        loss.append(stats["diffusion_loss"])
        diverged += stats["diverged_chains"]
        coef.append(stats.get("diffusion_loss_coef", 0.0))
        skipped += stats.get("reward_term_skipped", 0.0)
    after = heldout_figures(algo, heldout, pairs, evaluators)
    return {"mos_first": mos[0], "mos_last4": float(np.mean(mos[-4:])),
            "ho_dnsmos_0": before["dnsmos"], "ho_dnsmos_1": after["dnsmos"],
            "ho_plcmos_0": before["plcmos"], "ho_plcmos_1": after["plcmos"],
            "dl_max_x": max(loss) / loss[0], "dl_last_x": loss[-1] / loss[0],
            "ho_dl_x": after["diffusion_loss"] / before["diffusion_loss"], "diverged": diverged,
            "coef_max": max(coef), "skipped": skipped, "seconds": time.perf_counter() - t0}


COLUMNS = [("mos_first", "MOS 1", ".3f"), ("mos_last4", "MOS last4", ".3f"),
           ("ho_dnsmos_0", "HO DNSMOS 0", ".3f"), ("ho_dnsmos_1", "HO DNSMOS N", ".3f"),
           ("ho_plcmos_0", "HO PLCMOS 0", ".3f"), ("ho_plcmos_1", "HO PLCMOS N", ".3f"),
           ("dl_max_x", "DL max/1", ".2f"), ("dl_last_x", "DL last/1", ".2f"),
           ("ho_dl_x", "HO DL N/0", ".2f"), ("diverged", "diverged", ".0f"),
           ("coef_max", "coef max", ".3g"), ("skipped", "skipped", ".0f"),
           ("seconds", "s", ".0f")]


def row(label: str, figures: dict[str, Any]) -> str:
    return f"{label:<12}" + "".join(f"{format(figures[k], fmt):>13}" for k, _, fmt in COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["dlpo", "ddpo"],
                        choices=["dlpo", "ddpo", "dpok", "klinr", "rwr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--diffusion-loss-coef", type=float, default=None)
    parser.add_argument("--diffusion-loss-target", type=float, default=None,
                        help="dlpo's adaptive diffusion-loss weight (objective dlpo only)")
    parser.add_argument("--reward-scale", type=float, default=None)
    parser.add_argument("--inner-iterations", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    init_distributed()
    evaluators = Evaluators()
    heldout = load_prompts(HELDOUT)
    with tempfile.TemporaryDirectory() as tmp:
        pairs_dir = write_espeak_corpus([p.text for p in heldout], Path(tmp) / "pairs")
        shown = spec_for(args.objectives[0], args.seeds[0], args).dlpo
        print(f"{args.steps} steps, seeds {args.seeds}, lr {shown.learning_rate:g}, "
              f"diffusionLossCoef {shown.diffusion_loss_coef:g} (dlpo only), "
              f"diffusionLossTarget {shown.diffusion_loss_target}, rewardScale "
              f"{shown.reward_scale:g}, innerIterations {shown.inner_iterations}, "
              f"G={shown.group_size}, {shown.denoising_steps} denoising steps; "
              f"HO = held-out, DL = diffusion loss")
        print(f"{'run':<12}" + "".join(f"{title:>13}" for _, title, _ in COLUMNS))
        for objective in args.objectives:
            runs = []
            for seed in args.seeds:
                figures = run(spec_for(objective, seed, args), args.steps, heldout, pairs_dir,
                              evaluators)
                runs.append(figures)
                print(row(f"{objective} s{seed}", figures), flush=True)
            print(row(f"{objective} mean", {k: np.mean([r[k] for r in runs])
                                            for k, _, _ in COLUMNS}), flush=True)


if __name__ == "__main__":
    main()
