"""DLPO (diffusion-loss-guided policy optimisation) and its baselines on a WaveGrad 2 policy.

In pipeline order: sample G denoising chains per text, recording every stochastic step's
Gaussian log-probability (trainer/wavegrad2/sampling.py); hand the audio to the loop for
scoring; then, given the rewards, group-relative advantages and, per recorded step, the
objective below; one DeepSpeed optimizer step per inner iteration.

Objectives (``spec.dlpo.objective``), per stochastic step, with rho = p_theta / p_behaviour
the true importance ratio of that step and A = rewardScale * (r - mean_G) / (std_G + eps):

- ``dlpo``:  PPO-clip(rho, A) + diffusionLossCoef * (noise loss + duration loss) on
  ground-truth pairs (the model's own training loss keeps it a good generator);
- ``ddpo``:  PPO-clip(rho, A) alone;
- ``dpok``:  PPO-clip(rho, A) + klCoef * |eps_theta - eps_reference| (KL-style penalty);
- ``klinr``: PPO-clip(rho, A') with r' = r - klCoef * |eps_theta - eps_reference|;
- ``rwr``:   -rewardScale * r * log p_theta (reward-weighted regression).

The released DLPO code clamps a log-prob difference into [1 - 1e-4, 1 + 1e-4], which is
saturated almost always, so its reward term has no gradient; here rho is exp(log p_theta -
log p_behaviour), which is 1 with a full gradient on the first inner iteration.
A chain's log-density sums over its L audio samples; reward terms are divided by L so
their scale is per sample, like the diffusion loss's, whatever the audio length.
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
    step_eps,
    transition_log_prob,
)

log = logging.getLogger(__name__)

ENGINE_TAG = "engine"
REFERENCE_OBJECTIVES = ("dpok", "klinr")
EVAL_BATCH = 8
"""Ground-truth pairs in the fixed-seed diffusion-loss measurement logged every step."""


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


def step_policy_loss(objective: str, log_prob: torch.Tensor, old_log_prob: torch.Tensor,
                     advantages: torch.Tensor, weights: torch.Tensor, clip_epsilon: float,
                     samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward term of one denoising step for ``G`` chains, and the fraction clipped.

    ``log_prob``/``old_log_prob`` [G]: the step's log-density under the trained and the
    behaviour weights; ``weights`` [G]: rewardScale * r, used by ``rwr`` only.
    """
    if objective == "rwr":
        return (-(weights * log_prob) / samples).mean(), torch.zeros(())
    per_chain, clipped = clipped_surrogate(log_prob[:, None], old_log_prob[:, None],
                                           advantages, clip_epsilon)
    return per_chain.mean() / samples, clipped.mean()


def reference_distance(eps: torch.Tensor, eps_reference: torch.Tensor) -> torch.Tensor:
    """Mean |eps_theta - eps_reference| per chain: DPOK's and KLinR's penalty (the released
    code's L1; the per-step Gaussian KL is proportional to its square)."""
    return (eps - eps_reference).abs().flatten(1).mean(dim=1)


def recorded_penalty(chains: Chains) -> torch.Tensor:
    """KLinR's penalty (G,) recorded while sampling ``chains`` with the reference."""
    assert chains.reference_penalty is not None, "chains sampled without the reference"
    return chains.reference_penalty


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
                wave16 = resample(wave, self.net.config.sample_rate, SAMPLE_RATE)
                if on_audio is not None:
                    on_audio(len(audio), wave16)
                audio.append(wave16)
        stats = {"audio_seconds": float(np.mean([len(a) for a in audio])) / SAMPLE_RATE,
                 "denoising_steps": float(len(self.transitions))}
        return Rollout(prompts, audio, self.group_size, data=groups, stats=stats)

    # ------------------------------------------------------------------ update

    def update(self, rollout: Rollout, rewards: np.ndarray) -> dict[str, float]:
        groups: list[Chains] = rollout.data
        r = torch.as_tensor(rewards, dtype=torch.float32).view(len(groups), self.group_size)
        penalty = (torch.stack([recorded_penalty(g) for g in groups]).cpu()
                   if self.objective == "klinr" else None)
        advantages = reward_advantages(r, self.dlpo.reward_scale, penalty, self.dlpo.kl_coef)
        stats = {"diffusion_loss": self.measure_diffusion_loss()} if self.ground_truth else {}
        if penalty is not None:
            stats["reference_penalty"] = float(penalty.mean())
        sums: dict[str, float] = {}
        for _ in range(self.dlpo.inner_iterations):
            for part in self._policy_terms(groups, advantages, r):
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v
            if self.train_diffusion:
                batch = self.rng.sample(self.ground_truth,
                                        min(self.group_size, len(self.ground_truth)))
                loss = diffusion_loss(self.net, batch, self.generator)
                self._backward(self.dlpo.diffusion_loss_coef * loss.total, 1.0)
                sums["train_noise_loss"] = sums.get("train_noise_loss", 0.0) + float(
                    loss.noise.detach())
                sums["train_duration_loss"] = sums.get("train_duration_loss", 0.0) + float(
                    loss.duration.detach())
            self._update_ema()
        terms = len(groups) * (len(self.transitions) - 1) * self.dlpo.inner_iterations
        for k, v in sums.items():
            per = self.dlpo.inner_iterations if k.startswith("train_") else terms
            stats[k] = v / per
        if self.train_diffusion:
            stats["loss"] += self.dlpo.diffusion_loss_coef * (
                stats["train_noise_loss"] + stats["train_duration_loss"])
        stats["learning_rate"] = float(self.engine.get_lr()[0])
        return stats

    def _policy_terms(self, groups: list[Chains], advantages: torch.Tensor, rewards: torch.Tensor
                      ) -> Iterator[dict[str, float]]:
        """One backward pass per recorded denoising step; yields that step's figures."""
        share = 1.0 / (len(groups) * (len(self.transitions) - 1))
        device = next(self.net.parameters()).device
        for p, chains in enumerate(groups):
            samples = chains.states.shape[-1]
            adv = advantages[p].to(device)
            # rwr's weights: an unscorable (NaN) sample weighs 0, like its advantage
            weights = (self.dlpo.reward_scale * rewards[p].nan_to_num(nan=0.0)).to(device)
            for k in range(chains.stochastic_steps):
                features = features_for(self.net, chains.ids, chains.durations,
                                        self.group_size)[0]
                log_prob, eps = transition_log_prob(self.net, features, chains, k)
                old = chains.log_probs[k].to(device)
                loss, clipped = step_policy_loss(self.objective, log_prob, old, adv, weights,
                                                 self.dlpo.clip_epsilon, samples)
                figures = {"policy_loss": float(loss.detach()),
                           "clip_fraction": float(clipped),
                           "kl": float((old - log_prob.detach()).mean()) / samples}
                if self.objective == "dpok":
                    distance = reference_distance(eps, self._reference_eps(chains, k)).mean()
                    loss = loss + self.dlpo.kl_coef * distance
                    figures["reference_penalty"] = float(distance.detach())
                self._backward(loss, share)
                figures["loss"] = float(loss.detach())
                yield figures

    @torch.no_grad()
    def _reference_eps(self, chains: Chains, k: int) -> torch.Tensor:
        with self.reference() as ref:
            features = features_for(ref, chains.ids, chains.durations, self.group_size)[0]
            x_t = chains.states[k].to(features.device)
            return step_eps(ref, features, x_t, chains.transitions[k][0])

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
                    "ema": self.ema}, self._extra_file(directory))

    def load_state(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=ENGINE_TAG,
                                              load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed state under tag {ENGINE_TAG!r}")
        extra = torch.load(self._extra_file(directory), weights_only=False)
        self.generator.set_state(extra["generator"])
        self.rng.setstate(extra["rng"])
        self.ema = extra["ema"]

    def final_model(self) -> WaveGrad2:
        """A plain WaveGrad 2: EMA weights when kept, LoRA adapters merged."""
        module: Any = copy.deepcopy(self.engine.module)
        if self.ema is not None:
            params = dict(module.named_parameters())
            for name, value in self.ema.items():
                params[name].data.copy_(value)
        return module.merge_and_unload() if self.lora else module

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
