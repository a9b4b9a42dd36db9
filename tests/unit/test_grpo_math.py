"""GRPO maths against values computed by hand (in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.trainer.grpo import (
    GRPOLossConfig,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k3_kl,
    normalize_loss,
    zero_variance_groups,
)


def close(a: torch.Tensor, b: list, tol: float = 1e-4) -> bool:
    return torch.allclose(a, torch.tensor(b, dtype=a.dtype), atol=tol)


def test_advantages_scaled_by_unbiased_group_std() -> None:
    # mean 2.5; unbiased std = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3) = 1.29099
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert close(adv, [[-1.161895, -0.387298, 0.387298, 1.161895]])


def test_advantages_mean_centred_only_without_scaling() -> None:
    # Dr. GRPO: r - mean, per group (rows are independent groups)
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]]),
                           scale=False)
    assert close(adv, [[-1.5, -0.5, 0.5, 1.5], [-0.5, -0.5, 0.5, 0.5]])


def test_zero_variance_group_gets_zero_advantages_not_noise() -> None:
    # a tie up to float noise would otherwise be blown up by 1 / (std + 1e-8)
    rewards = torch.tensor([[0.7, 0.7 + 1e-9, 0.7, 0.7], [0.1, 0.9, 0.5, 0.5]])
    adv = group_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(4))
    assert adv[1].abs().sum() > 0
    assert zero_variance_groups(rewards).tolist() == [True, False]


NAN = float("nan")


def test_unscorable_samples_get_zero_advantage_and_stay_out_of_group_statistics() -> None:
    # scorable [1, 3]: mean 2, unbiased std sqrt(2) = 1.41421 -> -/+ 0.707107 (TRL's
    # nanmean/nanstd); a reward of 0 in their place would give mean 1, std 1.41421 instead
    adv = group_advantages(torch.tensor([[1.0, NAN, 3.0, NAN]]))
    assert close(adv, [[-0.707107, 0.0, 0.707107, 0.0]])
    centred = group_advantages(torch.tensor([[1.0, NAN, 3.0, 5.0]]), scale=False)
    assert close(centred, [[-2.0, 0.0, 0.0, 2.0]])


def test_groups_with_fewer_than_two_scorable_samples_carry_no_signal() -> None:
    rewards = torch.tensor([[NAN, NAN, NAN, NAN], [NAN, 0.9, NAN, NAN], [0.4, NAN, 0.4, 0.4],
                            [0.1, NAN, 0.9, NAN]])
    for scale in (True, False):
        adv = group_advantages(rewards, scale=scale)
        assert torch.isfinite(adv).all()
        assert torch.equal(adv[:3], torch.zeros(3, 4)) and adv[3].abs().sum() > 0
    assert zero_variance_groups(rewards).tolist() == [True, True, True, False]


def test_loss_stays_finite_with_unscorable_samples() -> None:
    advantages = group_advantages(torch.tensor([[0.2, NAN, 0.8, NAN]]))[0]
    logp = torch.log(torch.full((4, 3), 0.5)).requires_grad_()
    loss, _ = grpo_loss(logp, logp.detach(), None, advantages, torch.ones(4, 3),
                        GRPOLossConfig(kl_coef=0.0))
    loss.backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad[1], torch.zeros(3)) and logp.grad[0].abs().sum() > 0


def test_k3_kl_hand_value_and_zero_at_equality() -> None:
    # d = log(0.25) - log(0.5) = -ln 2; exp(d) - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    kl = k3_kl(torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3])))
    assert close(kl, [0.193147, 0.0])
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


@pytest.mark.parametrize(("ratio", "adv", "expected", "clipped"), [
    (1.5, 1.0, -1.2, 1.0),   # above 1 + eps with A > 0: clipped at 1.2
    (1.5, -1.0, 1.5, 0.0),   # A < 0: the unclipped (pessimistic) branch
    (0.5, 1.0, -0.5, 0.0),   # below 1 - eps with A > 0: unclipped
    (0.5, -1.0, 0.8, 1.0),   # below 1 - eps with A < 0: clipped at 0.8
    (1.1, 2.0, -2.2, 0.0),   # inside the trust region
])
def test_clipped_surrogate_branches(ratio: float, adv: float, expected: float,
                                    clipped: float) -> None:
    loss, mask = clipped_surrogate(torch.tensor([[math.log(ratio)]]), torch.zeros(1, 1),
                                   torch.tensor([adv]), epsilon=0.2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert mask.item() == clipped


def test_clip_epsilon_high_widens_the_upper_side_only() -> None:
    up, _ = clipped_surrogate(torch.tensor([[math.log(1.5)]]), torch.zeros(1, 1),
                              torch.tensor([1.0]), epsilon=0.2, epsilon_high=0.28)
    down, _ = clipped_surrogate(torch.tensor([[math.log(0.5)]]), torch.zeros(1, 1),
                                torch.tensor([-1.0]), epsilon=0.2, epsilon_high=0.28)
    assert up.item() == pytest.approx(-1.28)
    assert down.item() == pytest.approx(0.8)


def test_normalisations() -> None:
    per_token = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # sequence-mean: ((1 + 2) / 2 + 3 / 1) / 2 = 2.25; padding (9s) never counts
    assert normalize_loss(per_token, mask, "sequence-mean", 4).item() == pytest.approx(2.25)
    # token-sum (Dr. GRPO): (1 + 2 + 3) / (2 sequences * 4 max tokens) = 0.75
    assert normalize_loss(per_token, mask, "token-sum", 4).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="lossNormalization"):
        normalize_loss(per_token, mask, "bogus", 4)  # type: ignore[arg-type]


def test_grpo_loss_gradient_pushes_up_good_samples() -> None:
    # on-policy (ratio 1), no KL: loss = mean_i(-A_i), d loss / d logp_it = -A_i / (N * T_i)
    logp = torch.zeros(2, 2, requires_grad=True)
    loss, stats = grpo_loss(logp, logp.detach(), None, torch.tensor([1.0, -1.0]),
                            torch.ones(2, 2), GRPOLossConfig(kl_coef=0.0))
    loss.backward()
    assert loss.item() == pytest.approx(0.0)
    assert logp.grad is not None and close(logp.grad, [[-0.25, -0.25], [0.25, 0.25]])
    assert stats["kl"] == 0.0 and stats["clip_fraction"] == 0.0


def test_grpo_loss_adds_weighted_k3_kl() -> None:
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    cfg = GRPOLossConfig(kl_coef=0.1)
    loss, stats = grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1), cfg)
    assert stats["kl"] == pytest.approx(0.193147, abs=1e-5)
    assert loss.item() == pytest.approx(0.0193147, abs=1e-6)
