"""Resuming a run with held-out evaluation is exact: a run that crashes before its first
checkpoint (after an evaluation exported best/) and is later stopped and resumed writes the
same metrics.jsonl rows, summary and best/ as the same run uninterrupted. The quickstart's
prosody-lm under a real DeepSpeed engine (one gloo rank in this process), scored by a real
acoustic-judge server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.api.models import EvaluationSpec
from rlaif.api.validation import load_job
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.reward_client import RewardClient
from rlaif.rewards.server import ServerSettings
from rlaif.trainer.distributed import free_port, init_distributed
from rlaif.trainer.grpo_algorithm import build_algorithm
from rlaif.trainer.loop import (
    EXIT_OK,
    EXIT_STOPPED,
    StopRequest,
    TrainingLoop,
    seed_everything,
)
from tests.integration.reward_support import running_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
VOLATILE = ("time", "step_seconds", "time_generate", "time_reward_wait", "time_update",
            "time_other", "samples_per_second", "last_checkpoint_step")
"""What may differ between the two runs' rows: wall-clock figures, and the stop's extra
checkpoint (step 3)."""


class Crash(Exception):
    """Stands for SIGKILL: the loop ends where it is, writing nothing more."""


class Interrupt(StopRequest):
    """At the ``at``-th step of this process: ``crash`` (right after the step's evaluation and
    best/ export, before its checkpoint and rows), or a stop request (checkpoint, then exit)."""

    def __init__(self, at: int, crash: bool) -> None:
        super().__init__()
        self.left, self.crash = at, crash

    def requested(self) -> bool:
        self.left -= 1
        if self.left == 0 and self.crash:
            raise Crash
        return self.left == 0


def test_a_crashed_then_stopped_run_resumes_exactly(tmp_path: Path) -> None:
    heldout = tmp_path / "heldout.jsonl"
    lines = (REPO / "examples" / "data" / "quickstart-heldout.jsonl").read_text().splitlines()
    heldout.write_text("\n".join(lines[:2]) + "\n")
    spec = load_job(REPO / "examples" / "quickstart-cpu.yaml").spec
    spec.rewards = [r for r in spec.rewards if r.name == "alignment"]
    spec.steps, spec.checkpoint.every_steps, spec.grpo.batch_size = STEPS, 2, 1
    spec.evaluation = EvaluationSpec(prompts=str(heldout), every_steps=2, samples_per_prompt=1)
    ctx = init_distributed()
    judge = ServerSettings(kind="judge", model="builtin:acoustic", max_batch=8)
    with running_server(judge) as server:
        endpoints = [RewardEndpoint(name="alignment", url=server.url, weight=1.0)]

        def run(name: str, stop: StopRequest | None = None) -> int:
            config = TrainerConfig(job_name="resume", spec=spec, rewards=endpoints,
                                   output_dir=str(tmp_path / name / "out"),
                                   checkpoint_dir=str(tmp_path / name / "ckpt"),
                                   metrics_port=free_port(), base_dir=str(REPO / "examples"))
            seed_everything(spec.seed)  # as `rlaif train` does: each run is a new process
            algorithm = build_algorithm(config, ctx.rank, ctx.world_size)
            seed_everything(spec.seed)
            with RewardClient(endpoints) as client:
                return TrainingLoop(config, ctx, algorithm, client, stop=stop).run()

        assert run("straight") == EXIT_OK
        with pytest.raises(Crash):  # after step 2's evaluation, before checkpoint 2
            run("resumed", Interrupt(2, crash=True))
        out = tmp_path / "resumed" / "out"
        assert [(r["step"], r.get("kind")) for r in rows(out)] == [(0, "eval"), (1, None)]
        assert run("resumed", Interrupt(3, crash=False)) == EXIT_STOPPED  # checkpoint 3
        assert [(r["step"], r.get("kind")) for r in rows(out)] == [  # step 0 evaluated once
            (0, "eval"), (1, None), (2, None), (2, "eval"), (3, None)]
        assert (out / "best" / "adapter").is_dir()  # kept across the resume
        assert run("resumed") == EXIT_OK  # from step 3: step 4 and its evaluation

    straight = tmp_path / "straight" / "out"
    expected, got = rows(straight), rows(out)
    assert [(r["step"], r.get("kind")) for r in got] == [
        (0, "eval"), (1, None), (2, None), (2, "eval"), (3, None), (4, None), (4, "eval")]
    assert [(r["step"], r.get("kind")) for r in got] == [
        (r["step"], r.get("kind")) for r in expected]
    for before, after in zip(expected, got, strict=True):
        # e.g. train_reward of step 4's evaluation: steps 3 and 4, one before the stop
        assert {k: v for k, v in after.items() if k not in VOLATILE} == {
            k: v for k, v in before.items() if k not in VOLATILE}, after["step"]
    summary = json.loads((out / "summary.json").read_text())["evaluation"]
    assert summary == json.loads((straight / "summary.json").read_text())["evaluation"]
    assert summary["evaluations"] == 3
    best = json.loads((out / "best" / "meta.json").read_text())["step"]
    assert best == summary["best_step"] == json.loads(
        (straight / "best" / "meta.json").read_text())["step"]


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
