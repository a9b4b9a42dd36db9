"""DLPO (diffusion-loss-guided policy optimisation) and its baselines on a WaveGrad 2 policy.

In pipeline order: sample G denoising chains per text, recording every stochastic step's
Gaussian log-probability (trainer/wavegrad2/sampling.py); hand the audio to the loop for
scoring; then, given the rewards, group-relative advantages and, per recorded step, the
objective below; one DeepSpeed optimizer step per inner iteration.

Objectives (``spec.dlpo.objective``), per stochastic step, with log p the step's Gaussian
log-density averaged over the chain's audio samples (as DDPO averages over dimensions),
rho = exp(log p_theta - log p_old) and A = rewardScale * (r - mean_G) / (std_G + eps):

- ``dlpo``:  PPO-clip(rho, A) + diffusionLossCoef * (noise loss + duration loss) on
  ground-truth pairs (the model's own training loss keeps it a good generator); with
  diffusionLossTarget the weight adapts to hold the loss's drift (``adapt_coefficient``);
- ``ddpo``:  PPO-clip(rho, A) alone (Black et al. 2023);
- ``dpok``:  PPO-clip(rho, A) + klCoef * KL(p_theta || p_reference) of the step, the KL of
  two Gaussians with the same variance, ||mu_theta - mu_ref||^2 / (2 sigma_t^2) (Fan et al.);
- ``klinr``: PPO-clip(rho, A') with r' = r - klCoef * that KL along the sampled chain (DPOK's
  KL-in-the-reward variant; the name is the released DLPO code's);
- ``rwr``:   -w log p_theta, w = exp(rewardScale * r) normalised to mean 1 in each group
  (reward-weighted regression, beta = 1 / rewardScale).

The first pass over a batch of rollouts is on-policy: its own log-prob, detached, is
p_old, so rho is exactly 1 with the full gradient; later inner iterations reuse those
values, and the clip (DDPO: 1e-4) bounds how far they move. The released DLPO code instead
clamps a log-prob *difference* into [1 - 1e-4, 1 + 1e-4], saturated almost always, so its
reward term has no gradient; and a log-density summed over samples makes a ratio that one
optimiser step takes out of any range on seconds of audio.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlaif import modelref
from rlaif.api.models import DLPOSpec, LoraSpec
from rlaif.audio import resample
from rlaif.config import TrainerConfig
from rlaif.constants import SAMPLE_RATE
from rlaif.data import Prompt
from rlaif.trainer.algorithm import AudioSink, Rollout
from rlaif.trainer.diffusion import gaussian_kl
from rlaif.trainer.engine import build_engine
from rlaif.trainer.grpo import clipped_surrogate, group_advantages
from rlaif.trainer.wavegrad2.builtin import ground_truth_dir
from rlaif.trainer.wavegrad2.corpus import read_examples, symbol_ids
from rlaif.trainer.wavegrad2.frontend import phonemize
from rlaif.trainer.wavegrad2.losses import diffusion_loss
from rlaif.trainer.wavegrad2.model import WaveGrad2
from rlaif.trainer.wavegrad2.modeldir import load_model, save_model
from rlaif.trainer.wavegrad2.sampling import (
    Chains,
    features_for,
    sample_chains,
    transition_log_prob,
    transition_mean,
)

log = logging.getLogger(__name__)

ENGINE_TAG = "engine"
REFERENCE_OBJECTIVES = ("dpok", "klinr")
EVAL_BATCH = 8
"""Ground-truth pairs in the fixed-seed diffusion-loss measurement logged every step."""
COEF_CEILING = 1000.0
"""The adaptive diffusion-loss weight's ceiling (diffusionLossCoef's own maximum)."""


# --------------------------------------------------------------------------- objective maths


def reward_advantages(rewards: torch.Tensor, reward_scale: float,
                      penalty: torch.Tensor | None = None, kl_coef: float = 0.0
                      ) -> torch.Tensor:
    """A = rewardScale * (r' - mean) / (std + eps) per group (rows of ``[P, G]``), where
    r' = r - klCoef * penalty folds the reference penalty into the reward (KLinR). An
    unscorable (NaN) reward gets A = 0 and stays out of its group's mean and std."""
    if penalty is not None:
        rewards = rewards - kl_coef * penalty
    return reward_scale * group_advantages(rewards)


def rwr_weights(rewards: torch.Tensor, reward_scale: float) -> torch.Tensor:
    """Reward-weighted regression's weights exp(r / beta), beta = 1 / rewardScale, normalised
    within each group (rows of ``[P, G]``) to mean 1 over its scorable samples. An unscorable
    (NaN) sample weighs 0, like its advantage elsewhere."""
    scorable = ~torch.isnan(rewards)
    logits = torch.where(scorable, reward_scale * rewards, torch.tensor(float("-inf")))
    weights = torch.softmax(logits, dim=1) * scorable.sum(dim=1, keepdim=True)
    return weights.nan_to_num(nan=0.0)  # a group with nothing scorable: softmax of -inf


def step_policy_loss(objective: str, log_prob: torch.Tensor, old_log_prob: torch.Tensor,
                     advantages: torch.Tensor, weights: torch.Tensor, clip_epsilon: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward term of one denoising step for ``G`` chains, and the fraction of ratios
    outside [1 - clip, 1 + clip] (DDPO's clipfrac; the clip zeroes their gradient when it
    would push them further out).

    ``log_prob``/``old_log_prob`` [G]: the step's per-sample mean log-density under the
    trained weights and under the weights that sampled it; ``weights`` [G]: RWR's, used by
    ``rwr`` only.
    """
    if objective == "rwr":
        return -(weights * log_prob).mean(), torch.zeros(())
    per_chain, _ = clipped_surrogate(log_prob[:, None], old_log_prob[:, None], advantages,
                                     clip_epsilon)
    ratio = torch.exp(log_prob.detach() - old_log_prob)
    return per_chain.mean(), ((ratio - 1).abs() > clip_epsilon).double().mean()


def adapt_coefficient(coef: float, ratio: float, target: float, floor: float
                      ) -> tuple[float, bool]:
    """The diffusion-loss weight for this step, and whether to drop its reward term, given
    ``ratio`` = probe / probe at step 1 and ``spec.dlpo.diffusionLossTarget``.

    A constrained regulariser in the manner of Ziegler et al.'s adaptive KL controller, but
    aimed below the bound: once the ratio passes the midway point 1 + (target - 1) / 2 the
    weight doubles and the step drops its reward term; once it is back under a quarter of
    the way the weight halves (not below ``floor``, diffusionLossCoef); in between it holds.
    The reward term is dropped, not only outweighed, because Adam normalises the update's
    size, so a weight only shifts the balance, while a diffusion-loss-only step points the
    whole update back toward the generator; and from the midway point, not the bound,
    because the drift carries on for a step or more after the controller reacts.
    """
    if ratio > 1 + (target - 1) / 2:
        return min(coef * 2, COEF_CEILING), True
    if ratio < 1 + (target - 1) / 4:
        return max(coef / 2, floor), False
    return coef, False


def drop_diverged(chains: Chains, rewards: torch.Tensor) -> int:
    """Take chains that overflowed (a non-finite state or audio sample) out of the update, in
    place; returns how many.

    An unregularised policy can learn chains that blow up (``ddpo`` on the tiny model did,
    after 20 steps at lr 1e-3: states of 1e6, then NaN audio). Such a chain has no usable
    reward (its audio went out as silence) or log-prob, and a NaN in any term makes every
    weight NaN after the step (0 * NaN is NaN). Its reward becomes NaN (unscorable:
    advantage 0, RWR weight 0) and its states zeros, so its terms are finite and contribute
    nothing.
    """
    diverged = ~(torch.isfinite(chains.states).all(dim=2).all(dim=0)
                 & torch.isfinite(chains.audio).all(dim=1).to(chains.states.device))
    if diverged.any():
        chains.states[:, diverged] = 0.0
        rewards[diverged] = float("nan")
    return int(diverged.sum())


def recorded_penalty(chains: Chains) -> torch.Tensor:
    """KLinR's penalty (G,) recorded while sampling ``chains`` with the reference."""
    assert chains.reference_penalty is not None, "chains sampled without the reference"
    return chains.reference_penalty


# --------------------------------------------------------------------------- held-out audio


def playable(wave: np.ndarray, rate: int) -> np.ndarray:
    """A chain's audio at the reward servers' rate; silence for a diverged chain (the
    update leaves it out, ``drop_diverged``; NaN samples cannot be sent or written)."""
    if not np.isfinite(wave).all():
        wave = np.zeros_like(wave)
    return resample(wave, rate, SAMPLE_RATE)


def speak(net: WaveGrad2, transitions: list[tuple[float, float]], prompts: Sequence[Prompt],
          seeds: Sequence[int], samples_per_prompt: int) -> list[np.ndarray]:
    """Held-out audio: ``samples_per_prompt`` chains per prompt, each prompt's from its own
    seeded generator (the training generator is untouched). ``rlaif eval`` calls it on the
    base and the trained model with the same seeds: paired samples."""
    audio = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        ids = symbol_ids(net.config, phonemize(prompt.text))
        chains = sample_chains(net, ids, samples_per_prompt, transitions,
                               torch.Generator().manual_seed(seed))
        audio += [playable(w, net.config.sample_rate) for w in chains.audio.cpu().numpy()]
    return audio


# --------------------------------------------------------------------------- policy set-up


def apply_lora(model: WaveGrad2, lora: LoraSpec) -> torch.nn.Module:
    """peft LoRA adapters on the named layers; the reference is the adapters disabled."""
    from peft import LoraConfig, get_peft_model

    layers = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))}
    if not set(lora.target_modules) & layers:
        raise ValueError(f"spec.policy.lora.targetModules: none of {lora.target_modules} is a "
                         f"layer of WaveGrad 2 (e.g. {sorted(layers)[:8]}); or use "
                         f"spec.policy.finetune: full")
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                            lora_dropout=lora.dropout,
                                            target_modules=list(lora.target_modules)))


def check_spec(spec: DLPOSpec, zero_stage: int, has_ground_truth: bool) -> None:
    """Reject settings the DLPO trainer cannot honour, naming the field."""
    if zero_stage == 3:
        raise ValueError("spec.trainer.deepspeed.zeroStage: DLPO supports stages 0-2 (the "
                         "WaveGrad 2 policy is small; stage 3 would shard the EMA weights)")
    if spec.objective == "dlpo" and spec.diffusion_loss_coef > 0 and not has_ground_truth:
        raise ValueError("spec.data.groundTruth: dlpo's diffusion loss needs ground-truth "
                         "pairs (or set spec.dlpo.diffusionLossCoef: 0)")


# --------------------------------------------------------------------------- algorithm


class DLPOAlgorithm:
    """The Algorithm seam (trainer/algorithm.py) for DLPO and its baselines."""

    def __init__(self, config: TrainerConfig, rank: int, device: torch.device):
        spec = config.spec
        self.dlpo, self.seed = spec.dlpo, spec.seed
        self.objective = spec.dlpo.objective
        self.group_size = spec.dlpo.group_size
        self.net = load_model(modelref.resolve(spec.policy.model), device)
        gt = spec.data.ground_truth
        self.ground_truth = (read_examples(ground_truth_dir(config, gt), self.net.config)
                             if gt else [])
        check_spec(spec.dlpo, spec.trainer.deepspeed.zero_stage, bool(self.ground_truth))
        self.transitions = self.net.config.schedule.transitions(spec.dlpo.denoising_steps)
        self.lora = spec.policy.finetune == "lora"
        module: torch.nn.Module = self.net
        self.frozen: WaveGrad2 | None = None
        if self.lora:
            module = apply_lora(self.net, spec.policy.lora)
        elif self.objective in REFERENCE_OBJECTIVES:
            self.frozen = copy.deepcopy(self.net).requires_grad_(False)
        if spec.policy.dtype not in ("auto", "float32"):
            log.warning("DLPO keeps WaveGrad 2 in float32 (log-densities of long waveforms "
                        "need it); spec.policy.dtype %s ignored", spec.policy.dtype)
        self.train_diffusion = self.objective == "dlpo" and spec.dlpo.diffusion_loss_coef > 0
        # The regulariser's weight, fixed or adapted each step (diffusionLossTarget) against
        # the probe at step 1; both are in the checkpoint.
        self.diffusion_coef = spec.dlpo.diffusion_loss_coef
        self.diffusion_start: float | None = None
        steps = len(self.transitions) - 1
        self.micro_batches = spec.dlpo.batch_size * steps + int(self.train_diffusion)
        trainable = [p for p in module.parameters() if p.requires_grad]
        self.engine = build_engine(module, trainable, spec.trainer.deepspeed,
                                   spec.dlpo.learning_rate, torch.float32,
                                   micro_batches=self.micro_batches,
                                   updates_per_step=spec.dlpo.inner_iterations)
        self.ema = ({n: p.detach().clone() for n, p in self.engine.module.named_parameters()
                     if p.requires_grad} if spec.dlpo.ema_decay > 0 else None)
        self.rank = rank
        self.generator = torch.Generator().manual_seed(spec.seed * 1000 + rank)
        self.rng = random.Random(spec.seed * 1000 + rank)

    @contextlib.contextmanager
    def reference(self) -> Iterator[WaveGrad2]:
        """The frozen reference: the adapters disabled (LoRA) or a frozen copy."""
        if self.frozen is not None:
            yield self.frozen
        else:
            with self.engine.module.disable_adapter():
                yield self.net

    # ------------------------------------------------------------------ rollout

    def rollout(self, prompts: Sequence[Prompt], on_audio: AudioSink | None = None) -> Rollout:
        groups: list[Chains] = []
        audio: list[np.ndarray] = []
        reference = self.reference if self.objective == "klinr" else None
        for prompt in prompts:
            ids = symbol_ids(self.net.config, phonemize(prompt.text))
            chains = sample_chains(self.net, ids, self.group_size, self.transitions,
                                   self.generator, reference)
            groups.append(chains)
            for wave in chains.audio.cpu().numpy():
                wave16 = playable(wave, self.net.config.sample_rate)
                if on_audio is not None:
                    on_audio(len(audio), wave16)
                audio.append(wave16)
        stats = {"audio_seconds": float(np.mean([len(a) for a in audio])) / SAMPLE_RATE,
                 "denoising_steps": float(len(self.transitions))}
        return Rollout(prompts, audio, self.group_size, data=groups, stats=stats)

    def synthesize(self, prompts: Sequence[Prompt], seeds: Sequence[int],
                   samples_per_prompt: int, greedy: bool) -> list[np.ndarray]:
        """Held-out chains (``greedy`` has no meaning for a diffusion chain: it is always
        sampled)."""
        return speak(self.net, self.transitions, prompts, seeds, samples_per_prompt)

    # ------------------------------------------------------------------ update

    def update(self, rollout: Rollout, rewards: np.ndarray) -> dict[str, float]:
        groups: list[Chains] = rollout.data
        r = torch.as_tensor(rewards, dtype=torch.float32).view(len(groups), self.group_size)
        r = r.clone()  # drop_diverged marks rows in place; the caller's array stays as it was
        diverged = sum(drop_diverged(g, r[p]) for p, g in enumerate(groups))
        if diverged:
            log.warning("%d of %d chains diverged (non-finite states): left out of the update",
                        diverged, r.numel())
        penalty = (torch.stack([recorded_penalty(g) for g in groups]).cpu()
                   if self.objective == "klinr" else None)
        advantages = reward_advantages(r, self.dlpo.reward_scale, penalty, self.dlpo.kl_coef)
        weights = rwr_weights(r, self.dlpo.reward_scale)
        stats = {"diffusion_loss": self.measure_diffusion_loss()} if self.ground_truth else {}
        stats["diverged_chains"] = float(diverged)
        if self.dlpo.diffusion_loss_target is not None:
            skip = self._adapt(stats["diffusion_loss"])
            stats["reward_term_skipped"] = float(skip)
            if skip:  # zero advantages: same micro-batches, only the diffusion loss's gradient
                advantages = torch.zeros_like(advantages)
        if penalty is not None:
            stats["reference_penalty"] = float(penalty.mean())
        figures: dict[str, list[float]] = {}
        old_log_probs: dict[tuple[int, int], torch.Tensor] = {}
        for _ in range(self.dlpo.inner_iterations):
            for part in self._policy_terms(groups, advantages, weights, old_log_probs):
                for k, v in part.items():
                    figures.setdefault(k, []).append(v)
            if self.train_diffusion:
                batch = self.rng.sample(self.ground_truth,
                                        min(self.group_size, len(self.ground_truth)))
                loss = diffusion_loss(self.net, batch, self.generator)
                self._backward(self.diffusion_coef * loss.total, 1.0)
                figures.setdefault("train_noise_loss", []).append(float(loss.noise.detach()))
                figures.setdefault("train_duration_loss", []).append(
                    float(loss.duration.detach()))
            self._update_ema()
        stats.update({k: float(np.mean(v)) for k, v in figures.items()})
        # Only passes after the first can clip or drift (the first is on-policy, rho == 1).
        stats.setdefault("clip_fraction", 0.0)
        stats.setdefault("kl", 0.0)
        if self.train_diffusion:
            stats["diffusion_loss_coef"] = self.diffusion_coef
            stats["loss"] += self.diffusion_coef * (
                stats["train_noise_loss"] + stats["train_duration_loss"])
        stats["learning_rate"] = float(self.engine.get_lr()[0])
        return stats

    def _policy_terms(self, groups: list[Chains], advantages: torch.Tensor,
                      weights: torch.Tensor, old_log_probs: dict[tuple[int, int], torch.Tensor]
                      ) -> Iterator[dict[str, float]]:
        """One backward pass per recorded denoising step; yields that step's figures.

        ``old_log_probs`` is empty on the first pass, which fills it with its own detached
        log-probs: the weights have not moved yet, so they are the behaviour policy's, taken
        by the same function in the same dtype, and rho is exactly 1. (The log-probs recorded
        while sampling differ by float rounding; ``behaviour_log_ratio`` reports by how much.)
        """
        share = 1.0 / (len(groups) * (len(self.transitions) - 1))
        device = next(self.net.parameters()).device
        for p, chains in enumerate(groups):
            adv, w = advantages[p].to(device), weights[p].to(device)
            for k in range(chains.stochastic_steps):
                features = features_for(self.net, chains.ids, chains.durations,
                                        self.group_size)[0]
                log_prob, mean = transition_log_prob(self.net, features, chains, k)
                first_pass = (p, k) not in old_log_probs
                if first_pass:
                    old_log_probs[p, k] = log_prob.detach()
                old = old_log_probs[p, k]
                loss, clipped = step_policy_loss(self.objective, log_prob, old, adv, w,
                                                 self.dlpo.clip_epsilon)
                figures = {"policy_loss": float(loss.detach())}
                if first_pass:
                    recorded = chains.log_probs[k].to(device)
                    # a diverged chain recorded NaN: it is out of the update, and of this
                    figures["behaviour_log_ratio"] = float((old - recorded).abs()
                                                           .nan_to_num(0.0).max())
                else:
                    figures["clip_fraction"] = float(clipped)
                    figures["kl"] = float((old - log_prob.detach()).mean())
                if self.objective == "dpok":
                    mean_reference, std = self._reference_mean(chains, k)
                    kl = gaussian_kl(mean, mean_reference, std).mean()
                    loss = loss + self.dlpo.kl_coef * kl
                    figures["reference_penalty"] = float(kl.detach())
                self._backward(loss, share)
                figures["loss"] = float(loss.detach())
                yield figures

    @torch.no_grad()
    def _reference_mean(self, chains: Chains, k: int) -> tuple[torch.Tensor, float]:
        """The reference's posterior mean and std at recorded transition ``k``."""
        with self.reference() as ref:
            features = features_for(ref, chains.ids, chains.durations, self.group_size)[0]
            return transition_mean(ref, features, chains, k)

    def _backward(self, loss: torch.Tensor, share: float) -> None:
        """One micro-batch; the engine averages micro-batches, ``share`` is this one's weight
        in the objective, and it steps after the last one."""
        self.engine.backward(loss * share * self.micro_batches)
        self.engine.step()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.dlpo.ema_decay
        for name, p in self.engine.module.named_parameters():
            if name in self.ema:
                self.ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)

    def _adapt(self, probe: float) -> bool:
        """Set this step's diffusion-loss weight from the probe (measured before the update,
        so the step that sees the drift already acts on it); True: drop the reward term.
        Every rank measures the same weights on the same batch, so the weights agree."""
        target = self.dlpo.diffusion_loss_target
        assert target is not None
        if self.diffusion_start is None:
            self.diffusion_start = probe
        self.diffusion_coef, skip = adapt_coefficient(
            self.diffusion_coef, probe / self.diffusion_start, target,
            self.dlpo.diffusion_loss_coef)
        return skip

    @torch.no_grad()
    def measure_diffusion_loss(self) -> float:
        """The diffusion loss on a fixed ground-truth batch, windows and noise (same seed
        every step), so its drift measures how far RL moved the generator."""
        batch = self.ground_truth[:EVAL_BATCH]
        generator = torch.Generator().manual_seed(self.seed)
        return float(diffusion_loss(self.net, batch, generator).total)

    # ------------------------------------------------------------------ state

    def _extra_file(self, directory: Path) -> Path:
        return Path(directory) / f"dlpo-rank{self.rank}.pt"

    def save_state(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=ENGINE_TAG, save_latest=False,
                                    exclude_frozen_parameters=True)
        torch.save({"generator": self.generator.get_state(), "rng": self.rng.getstate(),
                    "ema": self.ema, "diffusion_coef": self.diffusion_coef,
                    "diffusion_start": self.diffusion_start}, self._extra_file(directory))

    def load_state(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=ENGINE_TAG,
                                              load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed state under tag {ENGINE_TAG!r}")
        extra = torch.load(self._extra_file(directory), weights_only=False)
        self.generator.set_state(extra["generator"])
        self.rng.setstate(extra["rng"])
        self.ema = extra["ema"]
        # a checkpoint from before diffusionLossTarget existed: a fixed weight, no start
        self.diffusion_coef = extra.get("diffusion_coef", self.diffusion_coef)
        self.diffusion_start = extra.get("diffusion_start")

    def final_model(self) -> WaveGrad2:
        """A plain WaveGrad 2: EMA weights when kept, LoRA adapters merged."""
        module: Any = copy.deepcopy(self.engine.module)
        if self.ema is not None:
            params = dict(module.named_parameters())
            for name, value in self.ema.items():
                params[name].data.copy_(value)
        return module.merge_and_unload() if self.lora else module

    def save_policy(self, out: Path) -> None:
        self.save_final(out)

    def save_final(self, out: Path) -> None:
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_rank() == 0:
            save_model(self.final_model(), out)


def build_algorithm(config: TrainerConfig, rank: int, world_size: int) -> DLPOAlgorithm:
    """The loop's entry point: the WaveGrad 2 policy on this rank's device, under DeepSpeed."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = (torch.device("cuda", local_rank) if torch.cuda.is_available()
              else torch.device("cpu"))
    return DLPOAlgorithm(config, rank, device)
