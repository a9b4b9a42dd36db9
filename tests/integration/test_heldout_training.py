"""Held-out evaluation inside a real training run: real Whisper tiny.en and acoustic judge
servers, the prosody-lm policy under a real DeepSpeed engine (one gloo rank in this
process). The evaluator (``heard``: the same Whisper server under another name) is not part
of the training reward. With the tensorboard extra, scalars and held-out audio reach
TensorBoard too."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlaif.api.models import EvaluationSpec, EvaluatorSpec, GuardSpec
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


def test_training_run_evaluates_held_out_prompts(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    heldout = tmp_path / "heldout.jsonl"
    lines = (REPO / "examples" / "data" / "quickstart-heldout.jsonl").read_text().splitlines()
    heldout.write_text("\n".join(lines[:3]) + "\n")
    spec = load_job(REPO / "examples" / "quickstart-cpu.yaml").spec
    spec.rewards = [r for r in spec.rewards if r.name in ("intelligibility", "alignment")]
    spec.steps, spec.checkpoint.every_steps, spec.grpo.batch_size = 3, 2, 1
    spec.evaluation = EvaluationSpec(
        prompts=str(heldout), every_steps=2, samples_per_prompt=2,
        evaluators=[EvaluatorSpec(name="heard", kind="asr", model="builtin:whisper-tiny.en")],
        guard=GuardSpec(minimum={"alignment": 0.999}))  # a floor no rendering reaches
    asr = ServerSettings(kind="asr", model="builtin:whisper-tiny.en", max_batch=8)
    judge = ServerSettings(kind="judge", model="builtin:acoustic", max_batch=8)
    with running_server(asr) as a, running_server(judge) as j:
        endpoints = [RewardEndpoint(name="intelligibility", url=a.url, weight=0.3),
                     RewardEndpoint(name="alignment", url=j.url, weight=0.7)]
        config = TrainerConfig(job_name="heldout", spec=spec, rewards=endpoints,
                               evaluators=[RewardEndpoint(name="heard", url=a.url, weight=0)],
                               output_dir=str(tmp_path / "out"),
                               checkpoint_dir=str(tmp_path / "ckpt"), metrics_port=free_port(),
                               base_dir=str(REPO / "examples"))
        ctx = init_distributed()
        algorithm = build_algorithm(config, ctx.rank, ctx.world_size)
        with RewardClient(endpoints) as client, caplog.at_level(logging.WARNING):
            assert TrainingLoop(config, ctx, algorithm, client).run() == EXIT_OK

    out = Path(config.output_dir)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 3]  # base, every 2 steps, the last step
    assert [r["step"] for r in rows if "kind" not in r] == [1, 2, 3]
    first = evals[0]
    assert first["eval_samples"] == 6 and first["train_reward"] is None
    for name in ("reward", "intelligibility", "alignment", "heard"):
        assert 0 < first[f"eval/{name}"] <= 1, name
    # the evaluator is the same Whisper: it hears what the training reward hears, up to the
    # batch it decodes each clip in (the two names' requests share the server's batches)
    assert first["eval/heard"] == pytest.approx(first["eval/intelligibility"], abs=0.1)
    assert first["eval/intelligibility/wer"] >= 0 and evals[1]["train_reward"] is not None
    samples = json.loads((out / "eval" / "step-000000.json").read_text())["samples"]
    assert [(s["prompt"], s["sample"]) for s in samples] == [(i, j) for i in range(3)
                                                             for j in range(2)]
    assert len(list((out / "eval" / "step-000003").glob("*.wav"))) == 6
    summary = json.loads((out / "summary.json").read_text())["evaluation"]
    assert summary["evaluations"] == 3 and summary["first_step"] == 0
    assert summary["change"]["reward"]["n"] == 6
    assert summary["change"]["reward"]["low"] <= summary["change"]["reward"]["mean"]
    best = json.loads((out / "best" / "meta.json").read_text())["step"]
    assert best == summary["best_step"] and (out / "best" / "adapter").is_dir()
    assert [r["hacking"][0]["rule"] for r in evals] == ["minimum"] * 3
    tensorboard = EventAccumulator(str(out / "tensorboard"), size_guidance={"audio": 0})
    tags = tensorboard.Reload().Tags()
    assert {"train/reward_mean", "eval/reward", "eval/heard"} <= set(tags["scalars"])
    assert [e.step for e in tensorboard.Scalars("eval/reward")] == [0, 2, 3]
    assert len(tags["audio"]) == 4 and all(t.startswith("heldout/") for t in tags["audio"])
    hacking = [r.getMessage() for r in caplog.records if "RewardHacking" in r.getMessage()]
    assert len(hacking) == 3 and "held-out alignment" in hacking[0]  # warn: the run went on
    assert "below its minimum 0.999" in hacking[0]
