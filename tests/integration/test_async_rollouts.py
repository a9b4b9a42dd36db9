"""One-step-off rollouts (spec.grpo.asyncRollouts: 1) through the real training loop: the
prosody-lm policy over espeak-ng under a real DeepSpeed engine (one gloo rank in this
process), scored by a real acoustic-judge server. Step t+1's samples are drawn on the
weights step t started from, and their sampling log-probs are pi_old; a stop and resume
samples the next step again on-policy, and every step trains on the prompts a synchronous
run gives it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlaif.api.validation import load_job
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.data import Prompt
from rlaif.reward_client import RewardClient
from rlaif.rewards.server import ServerSettings
from rlaif.trainer import grpo_algorithm
from rlaif.trainer.algorithm import AudioSink, Rollout
from rlaif.trainer.distributed import free_port, init_distributed
from rlaif.trainer.grpo_algorithm import GRPOAlgorithm, build_algorithm
from rlaif.trainer.loop import EXIT_OK, EXIT_STOPPED, StopRequest, TrainingLoop, seed_everything
from tests.integration.reward_support import running_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


@dataclass
class Trained:
    """What one update saw: its prompts, when its samples were drawn, and its pi_old."""

    prompts: list[str]
    sampled_at: int
    """The engine's optimizer steps when the rollout was sampled."""
    staleness: int
    behaviour_logprobs_match: bool
    """The sampling log-probs equal the log-probs recomputed on the weights of then."""
    moved: float
    """Largest change of those log-probs under the weights being trained."""
    pi_old_is_sampled: bool
    """The loss took the sampling log-probs as pi_old."""


@dataclass
class Recorder:
    """The real GRPO algorithm, noting each rollout's weights and what each update saw."""

    algorithm: GRPOAlgorithm
    pi_old: list[torch.Tensor]
    """Every pi_old the GRPO loss was given (the test's spy appends them)."""
    stop_after: int | None = None
    stop: StopRequest = field(default_factory=StopRequest)
    sampled: dict[int, tuple[int, dict[str, torch.Tensor]]] = field(default_factory=dict)
    trained: list[Trained] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.algorithm, name)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.algorithm.policy.model.named_parameters()
                if p.requires_grad}

    def rollout(self, prompts: Sequence[Prompt], on_audio: AudioSink | None = None) -> Rollout:
        snapshot = {n: p.detach().clone() for n, p in self.trainable().items()}
        rollout = self.algorithm.rollout(prompts, on_audio)
        self.sampled[id(rollout)] = (self.algorithm.engine.global_steps, snapshot)
        return rollout

    def update(self, rollout: Rollout, rewards: np.ndarray) -> dict[str, float]:
        sampled_at, snapshot = self.sampled.pop(id(rollout))
        now = self.logprobs(rollout)
        with torch.no_grad():
            current = {n: p.detach().clone() for n, p in self.trainable().items()}
            for n, p in self.trainable().items():
                p.copy_(snapshot[n])
            then = self.logprobs(rollout)
            for n, p in self.trainable().items():
                p.copy_(current[n])
        sampled = [g.completions.logprobs for g in rollout.data]
        seen = len(self.pi_old)
        stats = self.algorithm.update(rollout, rewards)
        used = self.pi_old[seen:]
        self.trained.append(Trained(
            [p.text for p in rollout.prompts], sampled_at, rollout.staleness,
            all(torch.allclose(a, b, atol=1e-4) for a, b in zip(sampled, then, strict=True)),
            max(float((a - b).abs().max()) for a, b in zip(sampled, now, strict=True)),
            bool(used) and all(any(u is s for s in sampled) for u in used)))
        if len(self.trained) == self.stop_after:
            self.stop.flag.set()
        return stats

    @torch.no_grad()
    def logprobs(self, rollout: Rollout) -> list[torch.Tensor]:
        policy, temperature = self.algorithm.policy, self.algorithm.grpo.temperature
        return [policy.logprobs(g.prompt, g.completions.ids, temperature) * g.completions.mask
                for g in rollout.data]


@pytest.fixture(scope="module")
def judge() -> Iterator[list[RewardEndpoint]]:
    with running_server(ServerSettings(kind="judge", model="builtin:acoustic")) as server:
        yield [RewardEndpoint(name="alignment", url=server.url, weight=1.0)]


def config_for(tmp: Path, endpoints: list[RewardEndpoint], async_rollouts: int
               ) -> TrainerConfig:
    spec = load_job(REPO / "examples" / "quickstart-cpu.yaml").spec
    spec.rewards = [r for r in spec.rewards if r.name == "alignment"]
    spec.evaluation = None  # held-out evaluation has its own tests
    spec.steps, spec.checkpoint.every_steps = STEPS, 2
    spec.grpo.group_size, spec.grpo.async_rollouts = 2, async_rollouts
    return TrainerConfig(job_name="async", spec=spec, rewards=endpoints,
                         output_dir=str(tmp / "out"), checkpoint_dir=str(tmp / "ckpt"),
                         metrics_port=free_port(), base_dir=str(REPO / "examples"))


@pytest.fixture
def pi_old(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """A spy on the GRPO loss: the real one runs, and each pi_old it is given is kept."""
    seen: list[torch.Tensor] = []
    real = grpo_algorithm.grpo_loss

    def spy(logp: torch.Tensor, old_logp: torch.Tensor, *rest: Any) -> Any:
        seen.append(old_logp)
        return real(logp, old_logp, *rest)

    monkeypatch.setattr(grpo_algorithm, "grpo_loss", spy)
    return seen


def train(config: TrainerConfig, pi_old: list[torch.Tensor], stop_after: int | None = None
          ) -> tuple[int, Recorder]:
    """One run of the loop as `rlaif train` starts it (seeded), resuming from a checkpoint."""
    ctx = init_distributed()
    seed_everything(config.spec.seed)
    recorder = Recorder(build_algorithm(config, ctx.rank, ctx.world_size), pi_old, stop_after)
    with RewardClient(config.rewards) as client:
        code = TrainingLoop(config, ctx, recorder, client, stop=recorder.stop).run()
    return code, recorder


def records(config: TrainerConfig) -> list[dict]:
    path = Path(config.output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_async_rollouts_are_one_update_old_and_resume_keeps_the_data_order(
        tmp_path: Path, judge: list[RewardEndpoint], pi_old: list[torch.Tensor]) -> None:
    sync = config_for(tmp_path / "sync", judge, async_rollouts=0)
    code, reference = train(sync, pi_old)
    assert code == EXIT_OK
    assert [t.sampled_at for t in reference.trained] == [0, 1, 2, 3]
    assert [r["staleness"] for r in records(sync)] == [0.0] * STEPS
    assert not any(t.pi_old_is_sampled for t in reference.trained)  # ratio 1 on-policy

    ahead = config_for(tmp_path / "async", judge, async_rollouts=1)
    code, first = train(ahead, pi_old, stop_after=2)  # stops after step 2's checkpoint
    assert code == EXIT_STOPPED and len(first.trained) == 2
    code, resumed = train(ahead, pi_old)
    assert code == EXIT_OK
    trained = first.trained + resumed.trained
    assert [t.prompts for t in trained] == [t.prompts for t in reference.trained]
    # step 2 was drawn before step 1's update, step 4 before step 3's; step 3, the first
    # after the resume, is drawn again on the restored weights
    assert [t.sampled_at for t in trained] == [0, 0, 2, 2]
    assert [t.staleness for t in trained] == [0, 1, 0, 1]
    assert [r["step"] for r in records(ahead)] == [1, 2, 3, 4]
    assert [r["staleness"] for r in records(ahead)] == [0.0, 1.0, 0.0, 1.0]
    # pi_old is the behaviour policy: the sampling log-probs are those of the weights of then,
    # and one update has moved them
    assert all(t.behaviour_logprobs_match for t in trained)
    assert all(t.pi_old_is_sampled and t.moved > 1e-3 for t in trained if t.staleness)
