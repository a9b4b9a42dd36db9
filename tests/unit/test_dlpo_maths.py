"""DLPO maths: per-step Gaussian log-probs, the chain total, advantages, the baselines'
KL and RWR weights, and a reward term that really moves a (tiny, random) WaveGrad 2."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.trainer.diffusion import NoiseSchedule, gaussian_kl, gaussian_log_prob, posterior
from rlaif.trainer.dlpo import (
    COEF_CEILING,
    adapt_coefficient,
    reward_advantages,
    rwr_weights,
    step_policy_loss,
)
from rlaif.trainer.wavegrad2 import config as presets
from rlaif.trainer.wavegrad2.model import WaveGrad2
from rlaif.trainer.wavegrad2.sampling import (
    Chains,
    features_for,
    sample_chains,
    step_eps,
    transition_log_prob,
)

GROUP = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> WaveGrad2:
    torch.manual_seed(0)
    return WaveGrad2(presets.tiny())


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.tensor([2, 3, 1, 1, 3])  # START, PAUSE, UNK...: ids only need to exist


def sample(model: WaveGrad2, ids: torch.Tensor, steps: int = 4, seed: int = 0) -> Chains:
    """Short chains (8 frames of audio) so the random model's durations do not matter."""
    transitions = model.config.schedule.transitions(steps)
    return sample_chains(model, ids, GROUP, transitions, torch.Generator().manual_seed(seed),
                         durations=torch.tensor([2.0, 2.0, 1.0, 1.0, 2.0]))


def test_step_log_prob_equals_torch_normal_averaged_over_samples() -> None:
    g = torch.Generator().manual_seed(1)
    x, mean = torch.randn(3, 500, generator=g), torch.randn(3, 500, generator=g)
    for std in (1e-3, 0.1, 2.0):
        expected = torch.distributions.Normal(mean.double(), std).log_prob(x.double()).mean(1)
        torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected, rtol=1e-6,
                                   atol=1e-6)


def test_eta_one_posterior_between_neighbours_is_the_ddpm_posterior() -> None:
    schedule = NoiseSchedule(1e-4, 0.02, 1000)
    ab = schedule.alpha_bar()
    t = 500
    beta = 1 - ab[t] / ab[t - 1]
    g = torch.Generator().manual_seed(2)
    x_t, eps = torch.randn(2, 64, generator=g).double(), torch.randn(2, 64, generator=g).double()
    mean, std = posterior(x_t, eps, float(ab[t]), float(ab[t - 1]))
    ddpm_mean = (x_t - beta / torch.sqrt(1 - ab[t]) * eps) / torch.sqrt(1 - beta)
    ddpm_var = (1 - ab[t - 1]) / (1 - ab[t]) * beta
    torch.testing.assert_close(mean, ddpm_mean)
    assert std == pytest.approx(math.sqrt(float(ddpm_var)), rel=1e-9)


def test_sampling_steps_cover_the_full_chain_and_fast_schedules() -> None:
    schedule = NoiseSchedule()
    assert schedule.sampling_steps(1000) == list(range(999, -1, -1))
    assert schedule.sampling_steps(2) == [999, 0]
    transitions = schedule.transitions(50)
    assert len(transitions) == 50 and transitions[-1][1] == 1.0
    assert all(prev > now for now, prev in transitions)
    with pytest.raises(ValueError, match="denoising steps"):
        schedule.sampling_steps(1)


def float32_tolerance(mean: torch.Tensor, std: float) -> float:
    """How far a chain's log-density may move when the float32 posterior mean differs by a
    rounding unit per sample (convolutions round differently with the tensor's alignment):
    each term moves by z * ulp / std, the sum by the root-sum-square of those, the mean by
    that over L; x4."""
    ulp = torch.finfo(torch.float32).eps * mean.double().abs()
    return 4 * float(((ulp / std) ** 2).sum(dim=1).sqrt().max()) / mean.shape[1]


def test_recorded_step_log_probs_match_normal_and_add_up_to_the_chain_total(model, ids
                                                                             ) -> None:
    chains = sample(model, ids, steps=4)
    assert chains.log_probs.shape == (3, GROUP) and chains.states.shape[:2] == (4, GROUP)
    features = features_for(model, chains.ids, chains.durations, GROUP)[0]
    means, stds, steps = [], [], []
    with torch.no_grad():
        for k in range(chains.stochastic_steps):
            ab_t, ab_prev = chains.transitions[k]
            eps = step_eps(model, features, chains.states[k], ab_t)
            mean, std = posterior(chains.states[k], eps, ab_t, ab_prev)
            normal = torch.distributions.Normal(mean.double(), std)
            expected = normal.log_prob(chains.states[k + 1].double()).mean(1)
            tolerance = float32_tolerance(mean, std)
            torch.testing.assert_close(chains.log_probs[k], expected, rtol=0, atol=tolerance)
            recomputed, _ = transition_log_prob(model, features, chains, k)
            torch.testing.assert_close(recomputed, chains.log_probs[k], rtol=0, atol=tolerance)
            means.append(mean.double())
            stds.append(torch.full_like(mean, std, dtype=torch.float64))
            steps.append(expected)
    # The whole chain as one distribution over every (step, sample): its log-density given
    # x_T is the sum of the steps' (per-sample means times L; float64 on both sides: only
    # summation order differs).
    chain = torch.distributions.Independent(
        torch.distributions.Normal(torch.stack(means, 1), torch.stack(stds, 1)), 2)
    total = chain.log_prob(chains.states[1:].transpose(0, 1).double())
    samples = chains.states.shape[-1]
    torch.testing.assert_close(total, torch.stack(steps).sum(0) * samples, rtol=1e-12, atol=0)


def test_advantages_are_group_relative_scaled_and_fold_the_klinr_penalty() -> None:
    rewards = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]])
    adv = reward_advantages(rewards, reward_scale=5.0)
    assert torch.allclose(adv[0].mean(), torch.tensor(0.0), atol=1e-6)
    assert adv[0].std() == pytest.approx(5.0, rel=1e-4)
    assert torch.equal(adv[1], torch.zeros(4))  # a tied group carries no signal
    penalty = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    folded = reward_advantages(rewards, 1.0, penalty, kl_coef=1.0)
    assert folded[0, 3] < folded[0, 2]  # the far-from-reference chain loses its lead


def released_ratio(log_prob: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """The released DLPO code's 'ratio': a log-prob difference clamped to 1 +- 1e-4."""
    return torch.clamp(log_prob - old, 1 - 1e-4, 1 + 1e-4)


def reward_gradient(model: WaveGrad2, chains: Chains, objective: str,
                    rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    adv = reward_advantages(rewards[None], 5.0)[0]
    for k in range(chains.stochastic_steps):
        features = features_for(model, chains.ids, chains.durations, GROUP)[0]
        log_prob, _ = transition_log_prob(model, features, chains, k)
        loss, _ = step_policy_loss(objective, log_prob, log_prob.detach(), adv,
                                   rwr_weights(rewards[None], 5.0)[0], 1e-4)
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["dlpo", "ddpo", "dpok", "klinr", "rwr"])
def test_reward_term_has_a_gradient_unlike_the_released_clamp(model, ids, objective) -> None:
    chains = sample(model, ids, steps=3)
    grads = reward_gradient(model, chains, objective, torch.tensor([1.0, 0.0, 0.2, 0.4]))
    squares = [(g.double() ** 2).sum() for g in grads.values()]
    norm = torch.sqrt(sum(squares, torch.zeros((), dtype=torch.float64)))
    assert norm > 0 and torch.isfinite(norm)
    # The released form: -clamp(logp - old_logp) * r has zero gradient at logp == old.
    model.zero_grad(set_to_none=True)
    features = features_for(model, chains.ids, chains.durations, GROUP)[0]
    log_prob, _ = transition_log_prob(model, features, chains, 0)
    (-released_ratio(log_prob, chains.log_probs[0].detach()) * 5.0).mean().backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters()
               if p.grad is not None)


def test_one_step_raises_the_log_prob_of_the_rewarded_chain(ids) -> None:
    torch.manual_seed(3)
    model = WaveGrad2(presets.tiny())
    chains = sample(model, ids, steps=3, seed=4)
    grads = reward_gradient(model, chains, "ddpo", torch.tensor([1.0, 0.0, 0.0, 0.0]))
    norm = torch.sqrt(sum(((g ** 2).sum() for g in grads.values()), torch.zeros(())))
    with torch.no_grad():  # a small step down the loss gradient (first-order regime)
        for name, p in model.named_parameters():
            if name in grads:
                p.sub_(1e-4 * grads[name] / norm)
    with torch.no_grad():
        features = features_for(model, chains.ids, chains.durations, GROUP)[0]
        after = sum(transition_log_prob(model, features, chains, k)[0]
                    for k in range(chains.stochastic_steps))
    change = after - chains.log_probs.sum(0)
    assert change[0] > 0
    assert change[0] > change[1:].max()


def test_first_pass_ratio_is_one_so_no_clip_however_tight_changes_the_gradient(model, ids
                                                                              ) -> None:
    chains = sample(model, ids, steps=3)
    features = features_for(model, chains.ids, chains.durations, GROUP)[0]
    log_prob, _ = transition_log_prob(model, features, chains, 0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    grads = []
    for clip in (1e-12, 0.5):
        loss, clipped = step_policy_loss("ddpo", log_prob, log_prob.detach(), adv, adv, clip)
        assert float(clipped) == 0.0
        grads.append(torch.autograd.grad(loss, log_prob, retain_graph=True)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], -adv.double() / GROUP, rtol=0, atol=0)  # REINFORCE


def test_kl_of_same_variance_gaussians_is_the_sigma_weighted_squared_distance() -> None:
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(2, 300, generator=g)
    assert torch.equal(gaussian_kl(mean, mean, 0.1), torch.zeros(2, dtype=torch.float64))
    for std in (1e-3, 0.1, 1.0):
        for shift in (0.01, 0.1, 1.0):
            kl = gaussian_kl(mean + shift, mean, std)
            torch.testing.assert_close(kl, torch.full((2,), shift**2 / (2 * std**2),
                                                      dtype=torch.float64), rtol=1e-5, atol=0)
            normal = torch.distributions.Normal
            expected = torch.distributions.kl_divergence(
                normal((mean + shift).double(), std), normal(mean.double(), std)).mean(1)
            torch.testing.assert_close(kl, expected, rtol=1e-9, atol=0)
    # Twice the distance, four times the KL; a tenth of the noise, a hundred times.
    base = gaussian_kl(mean + 0.1, mean, 0.1)
    torch.testing.assert_close(gaussian_kl(mean + 0.2, mean, 0.1), 4 * base, rtol=1e-5, atol=0)
    torch.testing.assert_close(gaussian_kl(mean + 0.1, mean, 0.01), 100 * base, rtol=1e-5,
                               atol=0)


def test_rwr_weights_are_exponentiated_rewards_normalised_per_group() -> None:
    rewards = torch.tensor([[0.0, 0.1, 0.2, 0.4], [0.3, float("nan"), 0.3, 0.9],
                            [float("nan")] * 4])
    w = rwr_weights(rewards, reward_scale=5.0)
    expected = torch.exp(5.0 * rewards[0])
    torch.testing.assert_close(w[0], 4 * expected / expected.sum())
    assert w[0].mean() == pytest.approx(1.0) and w[0, 3] / w[0, 0] == pytest.approx(math.exp(2))
    assert w[1, 1] == 0.0 and w[1, [0, 2, 3]].sum() == pytest.approx(3.0)  # NaN weighs 0
    assert w[1, 0] == w[1, 2] and w[1, 3] / w[1, 0] == pytest.approx(math.exp(3))
    assert torch.equal(w[2], torch.zeros(4))  # nothing scorable: no signal, still finite
    # A lower temperature (higher scale) concentrates the weight on the best sample.
    assert rwr_weights(rewards[:1], 50.0)[0, 3] > w[0, 3]


def test_adaptive_diffusion_loss_weight_grows_near_the_bound_and_shrinks_to_its_floor() -> None:
    """diffusionLossTarget 1.5: past the midway point 1.25 the weight doubles and the reward
    term is dropped, under 1.125 the weight halves down to diffusionLossCoef, in between it
    holds."""
    target, floor = 1.5, 0.1
    assert adapt_coefficient(0.4, 1.6, target, floor) == (0.8, True)
    assert adapt_coefficient(0.4, 1.3, target, floor) == (0.8, True)
    assert adapt_coefficient(0.4, 1.2, target, floor) == (0.4, False)
    assert adapt_coefficient(0.4, 1.1, target, floor) == (0.2, False)
    assert adapt_coefficient(0.15, 0.9, target, floor) == (floor, False)
    assert adapt_coefficient(floor, 1.0, target, floor) == (floor, False)
    assert adapt_coefficient(COEF_CEILING, 3.0, target, floor) == (COEF_CEILING, True)
