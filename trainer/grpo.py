"""GRPO as pure tensor functions, named after the papers' equations.

Shapes: ``B`` prompts, ``G`` samples per prompt, ``T`` completion tokens (right-padded;
``mask`` is 1 on real tokens). References: DeepSeekMath (GRPO, eq. 3), Dr. GRPO (Liu et al.
2025, unbiased normalisation), DAPO (asymmetric clip ``epsilon_high``), Schulman's k3 KL
estimator, and RLAIF-SPA's released settings (std-scaled advantages, k3 KL weight 0.01,
per-sequence token mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ZERO_STD = 1e-6
"""A group whose reward std is below this carries no learning signal (all samples tie)."""

Normalization = Literal["sequence-mean", "token-sum"]


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-8
                     ) -> torch.Tensor:
    """A_i = (r_i - mean(r)) / (std(r) + eps) within each group (rows of ``rewards [B, G]``).

    ``scale=False`` is Dr. GRPO's mean-centred advantage (no std division, which otherwise
    up-weights near-tied groups). std is the unbiased sample std, as TRL and RLAIF-SPA use.
    NaN rewards (samples a reward server could not score) are left out of mean and std, as
    TRL's nanmean/nanstd do, and get advantage 0: no push either way. Groups whose scorable
    rewards tie (std < ZERO_STD), or with fewer than two of them, get exactly zero advantages,
    so the result is always finite.
    """
    mean, std = nan_group_stats(rewards)
    centred = rewards - mean
    adv = centred / (std + eps) if scale else centred
    signal = ~torch.isnan(rewards) & (std >= ZERO_STD)  # False where std is NaN
    return torch.where(signal, adv, torch.zeros_like(adv))


def nan_group_stats(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and unbiased std ``[B, 1]`` over the non-NaN rewards (NaN where a row has
    none, std NaN where it has fewer than two)."""
    scorable = ~torch.isnan(rewards)
    n = scorable.sum(dim=1, keepdim=True)
    mean = torch.where(scorable, rewards, 0.0).sum(dim=1, keepdim=True) / n
    squares = torch.where(scorable, (rewards - mean) ** 2, 0.0).sum(dim=1, keepdim=True)
    std = torch.sqrt(squares / (n - 1))
    return mean, torch.where(n > 1, std, torch.full_like(std, float("nan")))


def zero_variance_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Bool [B]: groups with no reward spread among their scorable samples, or fewer than two
    scorable samples (RLAIF-SPA skips these)."""
    std = nan_group_stats(rewards)[1].squeeze(1)
    return torch.isnan(std) | (std < ZERO_STD)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): exp(d) - d - 1 with d = logp_ref - logp.

    Unbiased, always >= 0, and low-variance (Schulman, "Approximating KL divergence").
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      epsilon: float, epsilon_high: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A), rho = pi/pi_old.

    ``advantages`` is per sequence ``[N]`` and broadcasts over tokens. Returns the loss
    ``[N, T]`` and a float mask of tokens where the clipped branch was taken.
    """
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1 - epsilon, 1 + high)
    return torch.maximum(pg_loss1, pg_loss2), (pg_loss2 > pg_loss1).float()


def normalize_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: Normalization,
                   max_tokens: int) -> torch.Tensor:
    """Reduce ``[N, T]`` per-token losses to a scalar.

    ``sequence-mean``: (1/N) sum_i (1/|o_i|) sum_t l_it (GRPO, RLAIF-SPA), which favours
    short wrong answers over long ones. ``token-sum``: (1/(N * max_tokens)) sum_i sum_t l_it
    (Dr. GRPO): a constant denominator, so every token weighs the same.
    """
    masked = per_token * mask
    if mode == "sequence-mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if mode == "token-sum":
        return masked.sum() / (per_token.shape[0] * max_tokens)
    raise ValueError(f"lossNormalization: unknown mode {mode!r}")


@dataclass(frozen=True)
class GRPOLossConfig:
    """The GRPO hyper-parameters the loss needs (from spec.grpo)."""

    kl_coef: float = 0.01
    clip_epsilon: float = 0.2
    clip_epsilon_high: float | None = None
    normalization: Normalization = "sequence-mean"
    max_tokens: int = 1024


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, cfg: GRPOLossConfig
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """J_GRPO: clipped surrogate + kl_coef * k3 KL per token, normalised; returns loss, stats.

    ``ref_logp`` None (or ``kl_coef`` 0) drops the KL term. Stats are token means over
    ``mask``: kl, clip_fraction, and the ratio.
    """
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, cfg.clip_epsilon,
                                           cfg.clip_epsilon_high)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if cfg.kl_coef > 0 and ref_logp is not None:
        per_token = per_token + cfg.kl_coef * kl
    loss = normalize_loss(per_token, mask, cfg.normalization, cfg.max_tokens)
    n = mask.sum().clamp(min=1)
    with torch.no_grad():
        stats = {
            "kl": float((kl * mask).sum() / n),
            "clip_fraction": float((clipped * mask).sum() / n),
            "ratio": float((torch.exp(logp - old_logp) * mask).sum() / n),
        }
    return loss, stats
