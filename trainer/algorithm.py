"""The seam between the training loop and an RL algorithm (GRPO, DLPO).

Each algorithm module exposes ``build_algorithm(config, rank, world_size) -> Algorithm``
(``rlaif.trainer.grpo_algorithm``, ``rlaif.trainer.dlpo``);
``rlaif.trainer.engine.build_engine`` makes the DeepSpeed engine from
spec.trainer.deepspeed. The loop owns everything that is the same for every algorithm:
data sharding, reward scoring, checkpoints, metrics, the step-time breakdown. An algorithm
owns its policy, its rollouts and its update. Rewards are plain floats per sample, in rollout order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rlaif.data import Prompt


@dataclass
class Rollout:
    """Samples for a batch of prompts: ``group_size`` consecutive samples per prompt."""

    prompts: Sequence[Prompt]
    audio: list[np.ndarray]
    """16 kHz mono float32 waveforms, one per sample, in the order rewards come back."""
    group_size: int
    data: Any = None
    """Algorithm-private tensors (token ids, log-probs, denoising chains, ...)."""
    stats: dict[str, float] = field(default_factory=dict)
    """Rollout figures for the metrics log (completion length, entropy, ...)."""
    staleness: int = 0
    """Policy updates since these samples were drawn (set by the loop): 0 on-policy, 1 when
    spec.grpo.asyncRollouts sampled them ahead; the update then takes pi_old from the
    sampling log-probs kept in ``data``."""


AudioSink = Callable[[int, np.ndarray], None]
"""Called as soon as sample ``i``'s audio is rendered, so reward scoring overlaps generation."""


class AlgorithmState(Protocol):
    """The half of an algorithm that checkpoints save and restore."""

    def save_state(self, directory: Path) -> None:
        """Write everything needed to resume exactly (adapters/weights, optimizer, scheduler)
        under ``directory``. Called on EVERY rank (collective: ZeRO shards optimizer state);
        ranks write rank-specific files. With a DeepSpeed engine this is
        ``engine.save_checkpoint(directory, tag=..., exclude_frozen_parameters=True)``.
        The loop saves RNG states, data position and step itself and makes it atomic."""
        ...

    def load_state(self, directory: Path) -> None:
        """Restore what ``save_state`` wrote (every rank, same world size)."""
        ...


class Algorithm(AlgorithmState, Protocol):
    def rollout(self, prompts: Sequence[Prompt], on_audio: AudioSink | None = None) -> Rollout:
        """Generate ``group_size`` samples per prompt (calling ``on_audio`` per sample)."""
        ...

    def update(self, rollout: Rollout, rewards: np.ndarray) -> dict[str, float]:
        """One optimisation step (or ``innerIterations``) on the rollout; returns metrics."""
        ...

    def synthesize(self, prompts: Sequence[Prompt], seeds: Sequence[int],
                   samples_per_prompt: int, greedy: bool) -> list[np.ndarray]:
        """Held-out samples (``samples_per_prompt`` per prompt, prompt by prompt; prompt i's
        drawn from ``seeds[i]``): no gradients, and the training RNG streams are left as
        they were, so evaluating does not change what training does next."""
        ...

    def save_policy(self, out: Path) -> None:
        """The policy as it is now in its loadable form (the adapter), without ending training:
        the best checkpoint's export. Called on every rank; only rank 0 writes."""
        ...

    def save_final(self, out: Path) -> None:
        """The trained policy in its loadable form (adapter via save_pretrained, or weights).
        Called on every rank (ZeRO-3 must gather parameters); only rank 0 writes."""
        ...
