"""Gaussian-diffusion maths shared by WaveGrad 2 sampling, its pre-training and DLPO.

Notation follows DDPM (Ho et al. 2020) and DDIM (Song et al. 2021): ``alpha_bar[t]`` is the
cumulative product of ``1 - beta``; a sampling chain visits a decreasing subsequence of the
training steps, and each transition ``x_t -> x_s`` (s < t) is the DDIM step with eta = 1,
which is the DDPM posterior q(x_s | x_t, x0_hat) with x0_hat predicted from the noise
estimate. Treating that Gaussian as a policy is what DDPO and DLPO optimise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class NoiseSchedule:
    """The training schedule: linear betas over ``steps`` steps (DLPO: 1e-6 to 0.01, 1000)."""

    beta_start: float = 1e-6
    beta_end: float = 0.01
    steps: int = 1000

    def alpha_bar(self) -> torch.Tensor:
        """alpha_bar[t] for t = 0..steps-1, float64 so long chains keep their precision."""
        betas = torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)

    def sampling_steps(self, count: int) -> list[int]:
        """The ``count`` training steps a chain evaluates the model at, from steps-1 to 0.

        ``count == steps`` is the full DDPM chain of the paper; fewer is a DDIM-style
        evenly spaced subsequence (the fast schedules).
        """
        if not 2 <= count <= self.steps:
            raise ValueError(f"denoising steps must be in [2, {self.steps}], got {count}")
        return [round(i * (self.steps - 1) / (count - 1)) for i in range(count - 1, -1, -1)]

    def transitions(self, count: int) -> list[tuple[float, float]]:
        """(alpha_bar_t, alpha_bar_prev) for each model evaluation of a ``count``-step chain.

        All but the last are stochastic; the last (from step 0) goes to alpha_bar = 1, the
        noise-free x0 estimate, as DDPM's final step adds no noise.
        """
        ab = self.alpha_bar()
        steps = self.sampling_steps(count)
        prev = [float(ab[p]) for p in steps[1:]] + [1.0]
        return [(float(ab[t]), p) for t, p in zip(steps, prev, strict=True)]


def noise_level_bounds(schedule: NoiseSchedule) -> torch.Tensor:
    """sqrt(alpha_bar) with 1 prepended: training draws a continuous noise level between
    consecutive entries (WaveGrad's continuous noise-level conditioning)."""
    return torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bar().sqrt()])


def sample_noise_levels(schedule: NoiseSchedule, batch: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """sqrt(alpha_bar) per example, uniform within a uniformly chosen step's interval."""
    bounds = noise_level_bounds(schedule)
    t = torch.randint(1, schedule.steps + 1, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return (bounds[t - 1] + u * (bounds[t] - bounds[t - 1])).float()


def posterior(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float,
              alpha_bar_prev: float) -> tuple[torch.Tensor, float]:
    """Mean and std of p(x_prev | x_t) for the DDIM step with eta = 1.

    x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
    sigma^2 = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    mu = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps
    (DDIM eq. 12 and 16; with eta = 1 this is the DDPM posterior mean.)
    """
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    x0_hat = (x_t - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)
    direction = math.sqrt(max(1 - alpha_bar_prev - variance, 0.0))
    return math.sqrt(alpha_bar_prev) * x0_hat + direction * eps, math.sqrt(variance)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mean, std^2) averaged over every dimension but the first (one value per chain).

    The mean, not the sum, as DDPO does: a sum over the L audio samples of a chain grows with
    L, and so does any difference of two sums, so exp(difference) -- the importance ratio --
    leaves any useful range after one optimiser step on seconds of audio. The mean keeps the
    ratio near 1, and its gradient is the sum's divided by L: a per-sample scale, like the
    diffusion loss's, whatever the audio length.
    """
    # float64: the terms are large at low-noise steps (std ~ 1e-3) and ratios are differences.
    elementwise = (-((x.double() - mean.double()) ** 2) / (2 * std**2) - math.log(std)
                   - LOG_SQRT_2PI)
    return elementwise.flatten(1).mean(dim=1)


def gaussian_kl(mean: torch.Tensor, mean_reference: torch.Tensor, std: float) -> torch.Tensor:
    """KL(N(mean, std^2) || N(mean_reference, std^2)) per dimension, averaged over every
    dimension but the first: ||mu - mu_ref||^2 / (2 sigma^2) / L.

    The KL of one denoising step between two Gaussians with the same variance, a policy's
    and its reference's (DPOK, Fan et al. 2023); averaged over samples like
    ``gaussian_log_prob``.
    """
    squared = (mean.double() - mean_reference.double()) ** 2 / (2 * std**2)
    return squared.flatten(1).mean(dim=1)
