"""GRPOAlgorithm through a real DeepSpeed engine (one gloo rank in this process) on a tiny
codec-lm: the rollout hands over each sample's audio in order, updates train only LoRA,
tied groups skip the step, and save_state/load_state restore the weights exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlaif.api.models import GRPOSpec, LoraSpec
from rlaif.api.validation import load_job
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.data import Prompt
from rlaif.trainer.distributed import init_distributed
from rlaif.trainer.grpo_algorithm import GRPOAlgorithm, build_algorithm
from rlaif.trainer.policies.tiny import write_tiny_model_dirs

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [Prompt("Good morning.", {"structure": "Greeting/Introduction", "emotion": "Positive",
                                    "speechRate": "Medium Slow", "intonation": "Declarative"}),
           Prompt("Where is it?", {"structure": "Question", "emotion": "Confused",
                                   "speechRate": "Slow", "intonation": "Interrogative"})]


@pytest.fixture(scope="module")
def algorithm(tmp_path_factory: pytest.TempPathFactory) -> GRPOAlgorithm:
    tmp = tmp_path_factory.mktemp("codec-lm")
    write_tiny_model_dirs(tmp / "lm", tmp / "codec")
    spec = load_job(REPO / "examples" / "quickstart-cpu.yaml").spec
    spec.policy = spec.policy.model_copy(update={
        "kind": "codec-lm", "model": str(tmp / "lm"), "codec": str(tmp / "codec"),
        "lora": LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])})
    spec.grpo = GRPOSpec(group_size=4, batch_size=2, learning_rate=1e-2, kl_coef=0.05,
                         inner_iterations=2, max_new_tokens=12)
    spec.trainer.deepspeed.zero_stage = 0
    config = TrainerConfig(job_name="t", spec=spec, output_dir=str(tmp / "out"),
                           rewards=[RewardEndpoint(name="r", url="http://127.0.0.1:1",
                                                   weight=1.0)])
    ctx = init_distributed()
    torch.manual_seed(0)
    return build_algorithm(config, ctx.rank, ctx.world_size)


def weights(algo: GRPOAlgorithm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in algo.policy.model.state_dict().items()}


def test_rollout_hands_over_audio_in_order(algorithm: GRPOAlgorithm) -> None:
    seen: list[int] = []
    rollout = algorithm.rollout(PROMPTS, on_audio=lambda i, wave: seen.append(i))
    assert seen == list(range(8)) and len(rollout.audio) == 8
    assert all(w.dtype == np.float32 and w.ndim == 1 for w in rollout.audio)
    assert rollout.stats["completion_length"] > 0 and rollout.stats["entropy"] > 0


def test_update_trains_only_lora_and_skips_tied_groups(algorithm: GRPOAlgorithm,
                                                       tmp_path: Path) -> None:
    rollout = algorithm.rollout(PROMPTS)
    before = weights(algorithm)
    stats = algorithm.update(rollout, np.full(8, 0.5))  # every group ties: no signal
    assert stats["skipped"] == 1.0 and stats["zero_variance_groups"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in weights(algorithm).items())

    algorithm.save_state(tmp_path)
    stats = algorithm.update(rollout, np.array([0.1, 0.9, 0.4, 0.6, 0.7, 0.7, 0.7, 0.7]))
    assert stats["skipped"] == 0.0 and stats["zero_variance_groups"] == 0.5
    assert stats["kl"] > 0  # the second inner iteration has moved away from the reference
    after = weights(algorithm)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)

    algorithm.load_state(tmp_path)
    assert all(torch.equal(before[k], v) for k, v in weights(algorithm).items())


def test_unscorable_samples_train_nothing_and_poison_nothing(algorithm: GRPOAlgorithm) -> None:
    nan = float("nan")
    rollout = algorithm.rollout(PROMPTS)
    before = weights(algorithm)
    stats = algorithm.update(rollout, np.full(8, nan))  # no group has two scorable samples
    assert stats["skipped"] == 1.0 and stats["zero_variance_groups"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in weights(algorithm).items())

    stats = algorithm.update(rollout, np.array([0.1, nan, 0.9, nan, nan, nan, nan, 0.5]))
    assert stats["skipped"] == 0.0 and stats["zero_variance_groups"] == 0.5
    assert all(np.isfinite(stats[k]) for k in ("loss", "kl", "clip_fraction", "param_norm"))
    after = weights(algorithm)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
