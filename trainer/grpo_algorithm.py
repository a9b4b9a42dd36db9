"""GRPO on an autoregressive speech policy (prosody-lm, codec-lm, csm) under DeepSpeed.

In pipeline order: sample G completions per prompt (all prompts in one batch) and render
each one (handing each group's audio to the loop at once so scoring overlaps rendering);
then, given the rewards, group advantages, log-probs under the current and the reference
policy (LoRA disabled), the clipped, KL-regularised loss, and one DeepSpeed optimizer step
per inner iteration.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlaif.api.models import GRPOSpec
from rlaif.config import TrainerConfig
from rlaif.data import Prompt
from rlaif.trainer.algorithm import AudioSink, Rollout
from rlaif.trainer.distributed import all_any
from rlaif.trainer.engine import build_engine, compute_dtype
from rlaif.trainer.grpo import GRPOLossConfig, group_advantages, grpo_loss, zero_variance_groups
from rlaif.trainer.policies import Completions, SpeechLMPolicy, load_policy
from rlaif.trainer.rendering import RenderQueue

ENGINE_TAG = "engine"


@dataclass
class GroupSamples:
    """One prompt's completions, what the update needs of a rollout."""

    prompt: Prompt
    completions: Completions


class GRPOAlgorithm:
    """The Algorithm seam (trainer/algorithm.py) for GRPO."""

    def __init__(self, config: TrainerConfig, policy: SpeechLMPolicy, dtype: torch.dtype):
        spec = config.spec
        self.grpo = spec.grpo
        self.save_merged = spec.checkpoint.save_merged
        self.policy = policy
        self.group_size = spec.grpo.group_size
        self.loss_cfg = GRPOLossConfig(
            kl_coef=spec.grpo.kl_coef, clip_epsilon=spec.grpo.clip_epsilon,
            clip_epsilon_high=spec.grpo.clip_epsilon_high,
            normalization=spec.grpo.loss_normalization, max_tokens=spec.grpo.max_new_tokens)
        if spec.grpo.kl_coef > 0:
            policy.enable_reference()
        self.zero_stage = spec.trainer.deepspeed.zero_stage
        self.engine = build_engine(policy.model, policy.trainable_parameters(),
                                   spec.trainer.deepspeed, spec.grpo.learning_rate, dtype,
                                   micro_batches=spec.grpo.batch_size,
                                   updates_per_step=spec.grpo.inner_iterations)

    # ------------------------------------------------------------------ rollout

    def rollout(self, prompts: Sequence[Prompt], on_audio: AudioSink | None = None) -> Rollout:
        """All groups sampled at once (one batched decoding loop for token LMs), then each
        group queued for rendering; its audio goes to ``on_audio`` as soon as it is ready."""
        sampled = self.policy.sample_groups(prompts, self.group_size, self.grpo.max_new_tokens,
                                            self.grpo.temperature, self.grpo.top_p)
        audio: list[np.ndarray] = []
        with RenderQueue.of(self.policy, audio, on_audio) as renders:
            for prompt, done in zip(prompts, sampled, strict=True):
                renders.add(self.policy.completion_tokens(done.ids, done.mask), prompt)
        groups = [GroupSamples(p, c) for p, c in zip(prompts, sampled, strict=True)]
        stats = {"completion_length": float(np.mean([float(c.mask.sum(1).mean())
                                                      for c in sampled])),
                 "entropy": float(np.mean([c.entropy for c in sampled]))}
        return Rollout(prompts, audio, self.group_size, data=groups, stats=stats)

    def synthesize(self, prompts: Sequence[Prompt], seeds: Sequence[int],
                   samples_per_prompt: int, greedy: bool) -> list[np.ndarray]:
        return speak(self.policy, prompts, seeds, samples_per_prompt, greedy, self.grpo)

    def describe(self, rollout: Rollout) -> list[str]:
        """Each sample's completion in readable form (prosody programs, token counts)."""
        return [self.policy.describe(t) for g in rollout.data
                for t in self.policy.completion_tokens(g.completions.ids, g.completions.mask)]

    # ------------------------------------------------------------------ update

    def update(self, rollout: Rollout, rewards: np.ndarray) -> dict[str, float]:
        groups: list[GroupSamples] = rollout.data
        r = torch.as_tensor(rewards, dtype=torch.float32).view(len(groups), self.group_size)
        advantages = group_advantages(r, scale=self.grpo.scale_rewards)
        tied = zero_variance_groups(r)
        stats = {"zero_variance_groups": float(tied.float().mean()), "loss": 0.0, "kl": 0.0,
                 "clip_fraction": 0.0, "skipped": 1.0}
        if not all_any(not bool(tied.all())):  # RLAIF-SPA: no group on any rank has signal
            return stats
        temperature = self.grpo.temperature
        with torch.no_grad():
            ref = self._reference_logprobs(groups)
            old = self._old_logprobs(rollout)
        totals: dict[str, float] = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        n, drift = 0, 0.0
        for iteration in range(self.grpo.inner_iterations):
            for b, g in enumerate(groups):
                logp = self.policy.logprobs(g.prompt, g.completions.ids, temperature)
                if iteration == 0:  # the sampling policy's log-probs, recomputed (or, on a
                    # rollout sampled ahead, how far one update moved them)
                    drift = max(drift, g.completions.drift(logp))
                old_logp = old[b] if old is not None else logp.detach()
                loss, part = grpo_loss(logp, old_logp, None if ref is None else ref[b],
                                       advantages[b].to(logp.device),
                                       g.completions.mask.to(logp.device), self.loss_cfg)
                if bool(tied[b]):
                    loss = loss * 0.0  # keeps every rank's backward/step calls in lockstep
                self.engine.backward(loss)
                self.engine.step()
                totals["loss"] += float(loss.detach())
                totals["kl"] += part["kl"]
                totals["clip_fraction"] += part["clip_fraction"]
                n += 1
        stats.update({k: v / n for k, v in totals.items()}, skipped=0.0, logprob_drift=drift,
                     learning_rate=float(self.engine.get_lr()[0]), param_norm=self.param_norm())
        return stats

    def param_norm(self) -> float:
        """L2 norm of the trainable weights in float64: equal on every rank while in sync."""
        with torch.no_grad():
            return float(sum(p.detach().double().pow(2).sum()
                             for p in self.policy.trainable_parameters()) ** 0.5)

    def _old_logprobs(self, rollout: Rollout) -> list[torch.Tensor] | None:
        """pi_old of the clipped ratio, per group. A rollout drawn before the last update
        (spec.grpo.asyncRollouts) keeps its sampling log-probs: the ratio then corrects for
        the policy having moved. On-policy, the current weights' log-probs when inner
        iterations move them, else None (the update's own log-probs, detached: ratio 1)."""
        groups: list[GroupSamples] = rollout.data
        if rollout.staleness:
            return [g.completions.logprobs for g in groups]
        if self.grpo.inner_iterations > 1:
            return [self.policy.logprobs(g.prompt, g.completions.ids, self.grpo.temperature)
                    for g in groups]
        return None

    def _reference_logprobs(self, groups: list[GroupSamples]) -> list[torch.Tensor] | None:
        if self.loss_cfg.kl_coef == 0:
            return None
        with self.policy.reference_model() as ref:
            return [self.policy.logprobs(g.prompt, g.completions.ids, self.grpo.temperature,
                                         model=ref) for g in groups]

    # ------------------------------------------------------------------ state

    def save_state(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=ENGINE_TAG, save_latest=False,
                                    exclude_frozen_parameters=True)

    def load_state(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=ENGINE_TAG,
                                              load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed state under tag {ENGINE_TAG!r}")

    def save_policy(self, out: Path) -> None:
        self._export(out, merged=False)

    def save_final(self, out: Path) -> None:
        self._export(out, merged=self.save_merged)

    def _export(self, out: Path, merged: bool) -> None:
        import deepspeed
        import torch.distributed as dist

        params: Any = self.policy.trainable_parameters() if self.zero_stage == 3 else []
        with deepspeed.zero.GatheredParameters(params, enabled=self.zero_stage == 3):
            if not dist.is_initialized() or dist.get_rank() == 0:
                self.policy.save_pretrained(out)
                if merged:
                    self.policy.save_merged(out.with_name("merged"))


GREEDY_TOP_P = 1e-9
"""Nucleus sampling with a nucleus this small keeps only the most likely token: greedy
decoding through the same sampler (and the same allowed-token masks) as training."""


def speak(policy: SpeechLMPolicy, prompts: Sequence[Prompt], seeds: Sequence[int],
          samples_per_prompt: int, greedy: bool, grpo: GRPOSpec) -> list[np.ndarray]:
    """Held-out audio: ``samples_per_prompt`` renders per prompt, each prompt's drawn from its
    own seed inside a forked RNG (the training stream is untouched). ``rlaif eval`` calls it
    on the base and the trained policy with the same seeds: paired samples."""
    audio: list[np.ndarray] = []
    devices = [policy.device] if policy.device.type == "cuda" else []
    with RenderQueue.of(policy, audio) as renders:
        for prompt, seed in zip(prompts, seeds, strict=True):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                done = policy.sample(prompt, samples_per_prompt, grpo.max_new_tokens,
                                     grpo.temperature, GREEDY_TOP_P if greedy else grpo.top_p)
            renders.add(policy.completion_tokens(done.ids, done.mask), prompt)
    return audio


def build_algorithm(config: TrainerConfig, rank: int, world_size: int) -> GRPOAlgorithm:
    """The loop's entry point: policy on this rank's device, wrapped in a DeepSpeed engine."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = (torch.device("cuda", local_rank) if torch.cuda.is_available()
              else torch.device("cpu"))
    dtype = compute_dtype(config.spec.policy.dtype)
    return GRPOAlgorithm(config, load_policy(config.spec.policy, device, dtype), dtype)
