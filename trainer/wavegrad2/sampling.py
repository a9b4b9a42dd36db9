"""Denoising chains of WaveGrad 2 as a policy: every stochastic step is a Gaussian action.

A chain of K model evaluations makes K-1 stochastic DDIM (eta = 1) transitions, each
recorded with its log-probability under the sampling weights, then a noise-free final
step to the x0 estimate (DDPM adds no noise at t = 0). DLPO recomputes the log-probs of
the recorded transitions under the weights being trained.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from rlaif.trainer.diffusion import gaussian_kl, gaussian_log_prob, posterior
from rlaif.trainer.wavegrad2.model import WaveGrad2


@dataclass
class Chains:
    """``group`` chains for one text, all of the same length."""

    ids: torch.Tensor
    """(N,) phoneme ids."""
    durations: torch.Tensor
    """(N,) frames per phoneme the chains were sampled with (reused by the update)."""
    transitions: list[tuple[float, float]]
    """(alpha_bar_t, alpha_bar_prev) per model evaluation; the last one is noise-free."""
    states: torch.Tensor
    """(K, G, L): states[k] is the input of evaluation k; states[k+1] its sampled output."""
    log_probs: torch.Tensor
    """(K-1, G) float64 per-sample mean log-probability of each stochastic transition when
    sampled (the update recomputes it; the two differ by float rounding only)."""
    audio: torch.Tensor
    """(G, L) the final x0 estimate, clipped to [-1, 1]."""
    reference_penalty: torch.Tensor | None = None
    """(G,) KL to the reference per stochastic step and sample, when asked for (KLinR)."""

    @property
    def stochastic_steps(self) -> int:
        return len(self.transitions) - 1


def features_for(model: WaveGrad2, ids: torch.Tensor, durations: torch.Tensor | None,
                 group: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Upsampled features (group, frames, D), the durations used and the frame count."""
    device = next(model.parameters()).device
    ids = ids.to(device)[None]
    mask = torch.ones_like(ids, dtype=torch.float32)
    if durations is None:
        log_durations = model.durations(model.encoder(ids, mask))
        durations = torch.expm1(log_durations).clamp(min=0).round()[0].detach()
        if durations.sum() < 1:  # a text predicted to take no time still gets one frame
            durations = durations + (torch.arange(len(durations), device=device) == 0)
    features, frames, _ = model.encode(ids, mask, durations[None].to(device))
    return features.expand(group, -1, -1), durations, int(frames[0])


def step_eps(model: WaveGrad2, features: torch.Tensor, x_t: torch.Tensor,
             alpha_bar_t: float) -> torch.Tensor:
    level = torch.full((x_t.shape[0],), alpha_bar_t ** 0.5, device=x_t.device)
    return model.decoder(x_t, features, level)


Reference = Callable[[], AbstractContextManager[WaveGrad2]]
"""Enters the frozen reference model (a frozen copy, or the policy with LoRA disabled)."""


@torch.no_grad()
def sample_chains(model: WaveGrad2, ids: torch.Tensor, group: int,
                  transitions: list[tuple[float, float]], generator: torch.Generator,
                  reference: Reference | None = None,
                  durations: torch.Tensor | None = None) -> Chains:
    """Sample ``group`` chains for one text, recording states and per-step log-probs;
    with ``reference``, also each chain's KL to the reference (``gaussian_kl`` of the two
    posteriors, averaged over the stochastic steps). ``durations`` (frames per phoneme)
    overrides the duration predictor."""
    features, durations, frames = features_for(model, ids, durations, group)
    ref_features = None
    if reference is not None:
        with reference() as ref:
            ref_features = features_for(ref, ids, durations, group)[0]
    length = frames * model.config.hop_length
    x = torch.randn((group, length), generator=generator, device=generator.device)
    x = x.to(features.device)
    states, log_probs, penalties = [x], [], []
    for k, (ab_t, ab_prev) in enumerate(transitions):
        eps = step_eps(model, features, x, ab_t)
        mean, std = posterior(x, eps, ab_t, ab_prev)
        if k == len(transitions) - 1:
            x = mean
            break
        if reference is not None and ref_features is not None:
            with reference() as ref:
                mean_reference = posterior(x, step_eps(ref, ref_features, x, ab_t), ab_t,
                                           ab_prev)[0]
            penalties.append(gaussian_kl(mean, mean_reference, std))
        noise = torch.randn(x.shape, generator=generator, device=generator.device)
        x = mean + std * noise.to(x.device)
        log_probs.append(gaussian_log_prob(x, mean, std))
        states.append(x)
    penalty = torch.stack(penalties).mean(dim=0) if penalties else None
    return Chains(ids.cpu(), durations.cpu(), transitions, torch.stack(states),
                  torch.stack(log_probs), x.clamp(-1, 1), penalty)


def transition_mean(model: WaveGrad2, features: torch.Tensor, chains: Chains, k: int
                    ) -> tuple[torch.Tensor, float]:
    """Posterior mean (G, L) and std of recorded transition ``k`` under ``model``."""
    ab_t, ab_prev = chains.transitions[k]
    x_t = chains.states[k].to(features.device)
    return posterior(x_t, step_eps(model, features, x_t, ab_t), ab_t, ab_prev)


def transition_log_prob(model: WaveGrad2, features: torch.Tensor, chains: Chains, k: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean log-prob (G,) of recorded transition ``k`` under ``model``, and the
    posterior mean (G, L) it is taken under."""
    mean, std = transition_mean(model, features, chains, k)
    x_prev = chains.states[k + 1].to(features.device)
    return gaussian_log_prob(x_prev, mean, std), mean
