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

from rlaif.api.models import DLPOSpec, LoraSpec, RLAIFJobSpec
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.data import Prompt
from rlaif.trainer.distributed import init_distributed
from rlaif.trainer.dlpo import DLPOAlgorithm, apply_lora, build_algorithm, check_spec
from rlaif.trainer.wavegrad2 import config as presets
from rlaif.trainer.wavegrad2.corpus import write_espeak_corpus
from rlaif.trainer.wavegrad2.model import WaveGrad2
from rlaif.trainer.wavegrad2.modeldir import load_model, save_model
from rlaif.trainer.wavegrad2.pretrain import config_for

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
