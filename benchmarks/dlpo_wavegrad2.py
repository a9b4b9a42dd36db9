"""DLPO on WaveGrad 2: denoising steps per second of the tiny and the paper-sized decoder,
and rollout vs update time of one DLPO step (G chains of one text), in one run.

    .venv/bin/python benchmarks/dlpo_wavegrad2.py [--device cuda] [--seconds 1.0]

Random weights (speed does not depend on training); durations fixed so every size renders
the same length of audio. "update" recomputes every stochastic step's log-prob under the
trained weights and back-propagates the reward term, as DLPO's first inner iteration does
per step (rho = 1).
"""

from __future__ import annotations

import argparse
import time

import torch

from rlaif.trainer.dlpo import reward_advantages, step_policy_loss
from rlaif.trainer.wavegrad2 import config as presets
from rlaif.trainer.wavegrad2.config import WaveGrad2Config
from rlaif.trainer.wavegrad2.model import WaveGrad2
from rlaif.trainer.wavegrad2.sampling import (
    features_for,
    sample_chains,
    step_eps,
    transition_log_prob,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(config: WaveGrad2Config, seconds: float, group: int, device: torch.device
          ) -> tuple[WaveGrad2, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = WaveGrad2(config).to(device)
    frames = max(1, round(seconds * config.sample_rate / config.hop_length))
    ids = torch.tensor([2, 3, 2, 3])
    durations = torch.tensor([frames - 3.0, 1.0, 1.0, 1.0])
    return model, ids, durations


@torch.no_grad()
def denoising_steps_per_second(model: WaveGrad2, ids: torch.Tensor, durations: torch.Tensor,
                               group: int, repeats: int, device: torch.device) -> float:
    features = features_for(model, ids, durations, group)[0]
    x = torch.randn(group, features.shape[1] * model.config.hop_length, device=device)
    step_eps(model, features, x, 0.5)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step_eps(model, features, x, 0.5)
    sync(device)
    return repeats / (time.perf_counter() - t0)


def rollout_and_update(model: WaveGrad2, ids: torch.Tensor, durations: torch.Tensor,
                       group: int, steps: int, device: torch.device) -> tuple[float, float]:
    generator = torch.Generator(device=device).manual_seed(0)
    transitions = model.config.schedule.transitions(steps)
    sync(device)
    t0 = time.perf_counter()
    chains = sample_chains(model, ids, group, transitions, generator, durations=durations)
    sync(device)
    t1 = time.perf_counter()
    adv = reward_advantages(torch.linspace(0, 1, group)[None], 5.0)[0].to(device)
    for k in range(chains.stochastic_steps):
        features = features_for(model, chains.ids, chains.durations, group)[0]
        log_prob, _ = transition_log_prob(model, features, chains, k)
        loss, _ = step_policy_loss("dlpo", log_prob, log_prob.detach(), adv, adv, 1e-4)
        loss.backward()
    sync(device)
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per chain")
    parser.add_argument("--group", type=int, default=4, help="chains per text (G)")
    parser.add_argument("--denoising-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.seconds:g} s of "
          f"audio per chain, G={args.group}, {args.denoising_steps} denoising steps")
    print(f"{'model':<7}{'params':>12}{'steps/s':>10}{'x real time':>13}"
          f"{'rollout s':>11}{'update s':>10}{'update/rollout':>16}")
    for name, config in (("tiny", presets.tiny()), ("paper", presets.paper())):
        model, ids, durations = setup(config, args.seconds, args.group, device)
        repeats = 20 if name == "tiny" or device.type == "cuda" else 2
        rate = denoising_steps_per_second(model, ids, durations, args.group, repeats, device)
        rollout, update = rollout_and_update(model, ids, durations, args.group,
                                             args.denoising_steps, device)
        params = sum(p.numel() for p in model.parameters())
        # Real-time factor of the paper's 1000-step chain: audio seconds per wall second.
        realtime = rate * args.group * args.seconds / 1000
        print(f"{name:<7}{params:>12,}{rate:>10.2f}{realtime:>13.4f}{rollout:>11.2f}"
              f"{update:>10.2f}{update / rollout:>16.2f}")


if __name__ == "__main__":
    main()
