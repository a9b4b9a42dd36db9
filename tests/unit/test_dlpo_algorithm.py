"""The DLPO algorithm behind the loop's seam: real DeepSpeed engine (CPU, gloo), a tiny
WaveGrad 2 saved and loaded through its model dir, every objective, full and LoRA
fine-tuning, resumable state and the final model. Rewards are a fixed function of the
audio here; tests/integration/test_dlpo_run.py uses the real DNSMOS server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rlaif.api.models import DLPOSpec, LoraSpec, RLAIFJobSpec
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.data import Prompt
from rlaif.trainer.algorithm import Rollout
from rlaif.trainer.distributed import init_distributed
from rlaif.trainer.dlpo import (
    DLPOAlgorithm,
    apply_lora,
    build_algorithm,
    check_spec,
    playable,
)
from rlaif.trainer.wavegrad2 import config as presets
from rlaif.trainer.wavegrad2.corpus import write_espeak_corpus
from rlaif.trainer.wavegrad2.model import WaveGrad2
from rlaif.trainer.wavegrad2.modeldir import load_model, save_model
from rlaif.trainer.wavegrad2.pretrain import config_for
from rlaif.trainer.wavegrad2.sampling import sample_chains

PROMPTS = [Prompt("Open the door.", {})]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny WaveGrad 2 (the mechanics do not need a trained one) + its corpus."""
    root = tmp_path_factory.mktemp("wavegrad2")
    corpus = write_espeak_corpus(["Open the door.", "Close the door."], root / "corpus")
    torch.manual_seed(0)
    return save_model(WaveGrad2(replace(config_for(corpus, presets.tiny()),
                                        segment_frames=8)), root / "model")


def make(model_dir: Path, tmp_path: Path, **dlpo) -> DLPOAlgorithm:
    finetune = dlpo.pop("finetune", "full")
    spec = RLAIFJobSpec.model_validate({
        "algorithm": "dlpo",
        "policy": {"kind": "wavegrad2", "model": str(model_dir), "finetune": finetune,
                   "lora": {"r": 2, "targetModules": ["scale", "shift"]}},
        "data": {"prompts": "/unused.jsonl", "groundTruth": str(model_dir.parent / "corpus")},
        "rewards": [{"name": "mos", "kind": "mos", "model": "builtin:dnsmos", "weight": 1}],
        "dlpo": {"groupSize": 3, "denoisingSteps": 3, "learningRate": 1e-3, **dlpo},
        "trainer": {"deepspeed": {"zeroStage": 0}}})
    config = TrainerConfig(job_name="t", spec=spec, output_dir=str(tmp_path),
                           rewards=[RewardEndpoint(name="mos", url="http://x", weight=1)])
    init_distributed()
    return build_algorithm(config, 0, 1)


def quietness(audio: list[np.ndarray]) -> np.ndarray:
    return np.array([-float(np.sqrt(np.mean(a ** 2))) for a in audio])


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("objective", ["dlpo", "ddpo", "dpok", "klinr", "rwr"])
def test_every_objective_updates_the_policy(model_dir, tmp_path, objective) -> None:
    algo = make(model_dir, tmp_path, objective=objective)
    before = weights(algo.net)
    seen: list[int] = []
    rollout = algo.rollout(PROMPTS, on_audio=lambda i, a: seen.append(i))
    assert seen == [0, 1, 2] and all(a.dtype == np.float32 for a in rollout.audio)
    stats = algo.update(rollout, quietness(rollout.audio))
    assert all(np.isfinite(v) for v in stats.values()), stats
    assert "diffusion_loss" in stats and ("train_noise_loss" in stats) == (objective == "dlpo")
    assert ("reference_penalty" in stats) == (objective in ("dpok", "klinr"))
    # One pass: on-policy, nothing clipped; the update's recompute of each step's log-prob
    # matches the one recorded while sampling up to float rounding.
    assert stats["clip_fraction"] == 0.0 and stats["kl"] == 0.0
    assert stats["behaviour_log_ratio"] < 1e-6
    moved = [n for n, p in algo.net.named_parameters() if not torch.equal(p, before[n])]
    assert moved, "no parameter changed"


def test_lora_trains_only_adapters_and_merges_them_into_the_final_model(model_dir,
                                                                       tmp_path) -> None:
    algo = make(model_dir, tmp_path, objective="dpok", finetune="lora")
    before = weights(algo.engine.module)
    rollout = algo.rollout(PROMPTS)
    algo.update(rollout, quietness(rollout.audio))
    changed = {n for n, p in algo.engine.module.named_parameters()
               if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    algo.save_final(tmp_path / "final")
    final, base = load_model(tmp_path / "final"), load_model(model_dir)
    differs = [n for n, p in final.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert differs and all(n.endswith(("scale.weight", "shift.weight")) for n in differs)


def test_state_round_trip_resumes_the_same_rollouts(model_dir, tmp_path) -> None:
    algo = make(model_dir, tmp_path, objective="dlpo", emaDecay=0.5)
    rollout = algo.rollout(PROMPTS)
    algo.update(rollout, quietness(rollout.audio))
    algo.save_state(tmp_path / "ckpt")
    expected = algo.rollout(PROMPTS).audio
    resumed = make(model_dir, tmp_path, objective="dlpo", emaDecay=0.5)
    resumed.load_state(tmp_path / "ckpt")
    for a, b in zip(resumed.rollout(PROMPTS).audio, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # The final model carries the EMA weights, not the raw ones.
    resumed.save_final(tmp_path / "final")
    final = load_model(tmp_path / "final").state_dict()
    raw = resumed.net.state_dict()
    assert resumed.ema is not None
    assert any(not torch.equal(final[n], raw[n]) for n in resumed.ema)


def test_bad_settings_name_the_field(model_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"spec\.trainer\.deepspeed\.zeroStage"):
        check_spec(DLPOSpec(), zero_stage=3, has_ground_truth=True)
    with pytest.raises(ValueError, match=r"spec\.data\.groundTruth"):
        check_spec(DLPOSpec(objective="dlpo"), zero_stage=2, has_ground_truth=False)
    check_spec(DLPOSpec(objective="ddpo"), zero_stage=2, has_ground_truth=False)
    with pytest.raises(ValueError, match=r"spec\.policy\.lora\.targetModules: .*q_proj"):
        apply_lora(load_model(model_dir), LoraSpec(target_modules=["q_proj"]))


def test_a_diffusion_loss_target_is_refused_without_the_regulariser() -> None:
    for objective in ("ddpo", "dpok", "klinr", "rwr"):
        with pytest.raises(ValidationError, match=r"diffusionLossTarget: only objective dlpo"):
            DLPOSpec(objective=objective, diffusion_loss_target=1.5)
    with pytest.raises(ValidationError, match=r"diffusionLossTarget: needs diffusionLossCoef"):
        DLPOSpec(diffusion_loss_coef=0, diffusion_loss_target=1.5)
    assert DLPOSpec(diffusion_loss_target=1.5).diffusion_loss_target == 1.5


def test_near_the_bound_a_step_drops_the_reward_term_and_resumes_its_weight(
        model_dir, tmp_path) -> None:
    algo = make(model_dir, tmp_path, objective="dlpo", diffusionLossCoef=0.1,
                diffusionLossTarget=1.5)
    rollout = algo.rollout(PROMPTS)
    first = algo.update(rollout, quietness(rollout.audio))
    assert algo.diffusion_start == first["diffusion_loss"]
    assert first["reward_term_skipped"] == 0.0 and first["diffusion_loss_coef"] == 0.1
    assert first["policy_loss"] != 0.0
    algo.diffusion_start = first["diffusion_loss"] / 2  # as if the probe had doubled
    rollout = algo.rollout(PROMPTS)
    over = algo.update(rollout, quietness(rollout.audio))
    assert over["reward_term_skipped"] == 1.0 and over["policy_loss"] == 0.0
    assert over["diffusion_loss_coef"] == 0.2 == algo.diffusion_coef
    algo.save_state(tmp_path / "ckpt")
    resumed = make(model_dir, tmp_path, objective="dlpo", diffusionLossCoef=0.1,
                   diffusionLossTarget=1.5)
    resumed.load_state(tmp_path / "ckpt")
    assert (resumed.diffusion_coef, resumed.diffusion_start) == (0.2, algo.diffusion_start)


@pytest.mark.parametrize("objective", ["ddpo", "rwr"])
def test_an_unscorable_sample_leaves_the_update_finite(model_dir, tmp_path, objective) -> None:
    algo = make(model_dir, tmp_path, objective=objective)
    before = weights(algo.net)
    rollout = algo.rollout(PROMPTS)
    rewards = quietness(rollout.audio)
    rewards[1] = np.nan  # the reward server could not score sample 1
    stats = algo.update(rollout, rewards)
    assert all(np.isfinite(v) for v in stats.values()), stats
    after = weights(algo.net)
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(p, before[n]) for n, p in after.items())


PAPER_LEARNING_RATE = 3e-5
TEN_SECONDS = 1000
"""Frames of 10 s of audio at the tiny model's hop (160 samples at 16 kHz)."""


@pytest.fixture(scope="module")
def narrow_model_dir(model_dir) -> Path:
    """The tiny model with half its channels at the waveform's rate, beside the same corpus:
    10 s chains in a few CPU seconds."""
    config = replace(load_model(model_dir).config, upsample_channels=[16, 12, 8, 4],
                     downsample_channels=[4, 8, 12])
    torch.manual_seed(0)
    return save_model(WaveGrad2(config), model_dir.parent / "narrow-model")


def test_after_one_step_at_the_paper_lr_most_of_ten_seconds_stays_inside_the_clip(
        narrow_model_dir, tmp_path) -> None:
    """The second inner iteration sees the weights one Adam step later. With per-sample mean
    log-probs the ratios of the two noisier steps stay within DDPO's 1e-4 clip on 10 s of
    audio, so the reward term keeps its gradient; the last, low-noise step (sigma ~ 1e-2)
    leaves it. Summed over the 160 000 samples, as before, every ratio left any range. (The
    paper-sized model's ratios all leave the clip after such a step: docs/dlpo.md.)"""
    algo = make(narrow_model_dir, tmp_path, objective="dlpo", groupSize=2, denoisingSteps=4,
                innerIterations=2, learningRate=PAPER_LEARNING_RATE)
    assert algo.dlpo.clip_epsilon == 1e-4  # the default, DDPO's
    ids = torch.tensor([2, 5, 6, 3])
    durations = torch.tensor([TEN_SECONDS - 3.0, 1.0, 1.0, 1.0])
    chains = sample_chains(algo.net, ids, 2, algo.transitions, torch.Generator().manual_seed(0),
                           durations=durations)
    assert chains.states.shape[-1] == 10 * 16000
    rollout = Rollout(PROMPTS, list(chains.audio.numpy()), 2, data=[chains])
    stats = algo.update(rollout, np.array([0.2, 0.6]))
    assert stats["kl"] > 0.0  # the second pass did see moved weights
    assert stats["clip_fraction"] < 0.5, stats


def test_a_diverged_chain_is_silent_and_left_out_of_the_update(model_dir, tmp_path) -> None:
    """An unregularised policy can learn chains that overflow; the run must go on without it
    (NaN audio cannot be sent to a reward server, a NaN term would poison every weight)."""
    algo = make(model_dir, tmp_path, objective="ddpo", groupSize=4)
    before = weights(algo.net)
    rollout = algo.rollout(PROMPTS)
    rewards = quietness(rollout.audio)
    chains = rollout.data[0]
    chains.states[2:, 1] = float("inf")  # chain 1 blew up after its second evaluation
    chains.log_probs[1:, 1] = float("nan")
    chains.audio[2] = float("nan")  # chain 2's states stayed finite, its last step did not
    stats = algo.update(rollout, rewards)
    assert stats["diverged_chains"] == 2.0 and np.isfinite(rewards).all()  # caller's untouched
    assert all(np.isfinite(v) for v in stats.values()), stats
    after = weights(algo.net)
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(p, before[n]) for n, p in after.items())
    assert np.array_equal(playable(np.full(160, np.nan, dtype=np.float32),
                                   algo.net.config.sample_rate),
                          np.zeros(160, dtype=np.float32))
