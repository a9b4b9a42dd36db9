"""DLPO's importance ratio one Adam step after sampling, per denoising step: how far the
per-sample mean log-prob (what the trainer uses, as DDPO) and the log-prob summed over the
chain's samples (the released code's, and this project's before) move, and the fraction of
ratios outside DDPO's 1e-4 clip.

    .venv/bin/python benchmarks/dlpo_ratio.py [--config paper] [--seconds 10] [--lr 3e-5]

Random weights (no paper-sized WaveGrad 2 is pre-trained here); G chains of one text with
fixed durations; one Adam step on the reward term of every stochastic step with advantages
-1..1, then each step's log-prob is recomputed: the second inner iteration's view.
tests/unit/test_dlpo_algorithm.py checks the same on a narrow tiny model in CPU seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlaif.trainer.dlpo import step_policy_loss
from rlaif.trainer.wavegrad2 import config as presets
from rlaif.trainer.wavegrad2.model import WaveGrad2
from rlaif.trainer.wavegrad2.sampling import features_for, sample_chains, transition_log_prob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["paper", "tiny"], default="paper")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per chain")
    parser.add_argument("--group", type=int, default=2, help="chains per text (G)")
    parser.add_argument("--denoising-steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-5, help="Adam (paper: 3e-5)")
    parser.add_argument("--clip", type=float, default=1e-4, help="PPO clip (DDPO: 1e-4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = getattr(presets, args.config)()
    model = WaveGrad2(config)
    frames = max(4, round(args.seconds * config.sample_rate / config.hop_length))
    ids, durations = torch.tensor([2, 3, 2, 3]), torch.tensor([frames - 3.0, 1.0, 1.0, 1.0])
    transitions = config.schedule.transitions(args.denoising_steps)
    t0 = time.perf_counter()
    chains = sample_chains(model, ids, args.group, transitions,
                           torch.Generator().manual_seed(args.seed), durations=durations)
    samples = chains.states.shape[-1]
    advantages = torch.linspace(-1, 1, args.group, dtype=torch.float64)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    old = []
    for k in range(chains.stochastic_steps):
        features = features_for(model, chains.ids, chains.durations, args.group)[0]
        log_prob, _ = transition_log_prob(model, features, chains, k)
        old.append(log_prob.detach())
        loss, _ = step_policy_loss("ddpo", log_prob, old[-1], advantages, advantages,
                                   args.clip)
        (loss / chains.stochastic_steps).backward()
    optimiser.step()
    print(f"{args.config} WaveGrad 2 ({sum(p.numel() for p in model.parameters()):,} "
          f"parameters, random weights), {samples / config.sample_rate:.1f} s = {samples:,} "
          f"samples per chain, G={args.group}, {args.denoising_steps} denoising steps, one "
          f"Adam step at lr {args.lr:g}; clip {args.clip:g}")
    print(f"{'step':>4}{'sigma':>10}{'|log rho| mean-form, max':>27}{'outside clip':>14}"
          f"{'|log rho| sum-form, max':>26}")
    outside = []
    with torch.no_grad():
        for k in range(chains.stochastic_steps):
            features = features_for(model, chains.ids, chains.durations, args.group)[0]
            log_prob, _ = transition_log_prob(model, features, chains, k)
            log_ratio = (log_prob - old[k]).abs()
            outside += ((torch.exp(log_prob - old[k]) - 1).abs() > args.clip).tolist()
            ab_t, ab_prev = transitions[k]
            sigma = ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
            print(f"{k:>4}{sigma:>10.2e}{float(log_ratio.max()):>27.2e}"
                  f"{sum(outside[-args.group:]) / args.group:>14.2f}"
                  f"{float(log_ratio.max()) * samples:>26.2e}")
    print(f"clip fraction over all steps and chains: {sum(outside) / len(outside):.2f} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
