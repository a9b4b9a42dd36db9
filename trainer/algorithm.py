"""The seam between the training loop and an RL algorithm (GRPO, DLPO).

The loop owns everything that is the same for every algorithm: data sharding, reward
scoring, checkpoints, metrics, the step-time breakdown. An algorithm owns its policy, its
rollouts and its update. Rewards are plain floats per sample, in rollout order.
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


AudioSink = Callable[[int, np.ndarray], None]
"""Called as soon as sample ``i``'s audio is rendered, so reward scoring overlaps generation."""


class Algorithm(Protocol):
    def rollout(self, prompts: Sequence[Prompt], on_audio: AudioSink | None = None) -> Rollout:
        """Generate ``group_size`` samples per prompt (calling ``on_audio`` per sample)."""
        ...

    def update(self, rollout: Rollout, rewards: np.ndarray) -> dict[str, float]:
        """One optimisation step (or ``innerIterations``) on the rollout; returns metrics."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (weights/adapters, optimizer, scheduler)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save_final(self, out: Path) -> None:
        """The trained policy in its loadable form (adapter via save_pretrained, or weights)."""
        ...
