"""The training loop when a reward server cannot score: real Whisper tiny.en and acoustic
judge servers, the prosody-lm policy under a real DeepSpeed engine (one gloo rank in this
process). A prompt whose text has no words ("Hmm, um...") is an item error for the asr
server, so every sample of it is unscorable: a step made only of such prompts must not
train, and a step with half of them trains on the scorable half."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from rlaif.api.validation import load_job
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.reward_client import RewardClient
from rlaif.rewards.server import ServerSettings
from rlaif.trainer.distributed import free_port, init_distributed
from rlaif.trainer.grpo_algorithm import build_algorithm
from rlaif.trainer.loop import EXIT_OK, TrainingLoop
from tests.integration.reward_support import running_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LABELS = {"structure": "Statement", "emotion": "Neutral", "speechRate": "Medium Slow",
          "intonation": "Declarative"}
PROMPTS = ["Hmm, um...", "Um... hmm.",  # step 1: no sample scorable by asr
           "Close the door before you leave the room.", "Hmm... um."]  # step 2: half


def strict_json(line: str) -> dict:
    def reject(token: str) -> None:
        raise ValueError(f"not JSON: {token}")
    return json.loads(line, parse_constant=reject)


def test_mostly_unscorable_step_is_skipped_and_logged(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": t, "labels": LABELS}) + "\n"
                               for t in PROMPTS))
    spec = load_job(REPO / "examples" / "quickstart-cpu.yaml").spec
    spec.rewards = [r for r in spec.rewards if r.name in ("intelligibility", "alignment")]
    spec.evaluation = None  # held-out evaluation has its own tests
    spec.data.prompts, spec.data.shuffle = str(prompts), False
    spec.steps, spec.checkpoint.every_steps = 2, 2
    asr = ServerSettings(kind="asr", model="builtin:whisper-tiny.en", max_batch=8)
    judge = ServerSettings(kind="judge", model="builtin:acoustic", max_batch=8)
    with running_server(asr) as a, running_server(judge) as j:
        endpoints = [RewardEndpoint(name="intelligibility", url=a.url, weight=0.3),
                     RewardEndpoint(name="alignment", url=j.url, weight=0.7)]
        config = TrainerConfig(job_name="unscorable", spec=spec, rewards=endpoints,
                               output_dir=str(tmp_path / "out"),
                               checkpoint_dir=str(tmp_path / "ckpt"), metrics_port=free_port())
        ctx = init_distributed()
        algorithm = build_algorithm(config, ctx.rank, ctx.world_size)
        with RewardClient(endpoints) as client, caplog.at_level(logging.WARNING):
            assert TrainingLoop(config, ctx, algorithm, client).run() == EXIT_OK

    out = Path(config.output_dir)
    first, second = [strict_json(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert first["skipped"] == first["skipped_unscorable"] == 1.0 and "loss" not in first
    assert first["reward_mean"] is None and first["reward/intelligibility"] is None
    assert first["reward_unscorable"] == 1.0 and first["reward_unscorable/alignment"] == 0.0
    assert first["reward_errors/intelligibility"] == 8.0 and 0 < first["reward/alignment"] <= 1
    assert second["skipped_unscorable"] == 0.0 and second["reward_unscorable"] == 0.5
    assert 0 < second["reward_mean"] <= 1 and np.isfinite(second["loss"])
    # one optimiser step in all: step 2's (a skipped step takes none)
    assert algorithm.engine.global_steps == spec.grpo.inner_iterations
    assert all(p.isfinite().all() for p in algorithm.policy.trainable_parameters())
    warning = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith("step 1: 100% of the samples")
    assert "reward 'intelligibility': 8 of 8 failed, e.g. 'items[0].text: required" in warning[0]
    summary = strict_json((out / "summary.json").read_text())
    assert summary["steps_skipped_unscorable"] == 1 and summary["reward_first"] is not None
    assert (out / "reward_curve.png").exists()
    assert len(list((out / "samples" / "step-000001").glob("*-rewardunscorable.wav"))) == 8
