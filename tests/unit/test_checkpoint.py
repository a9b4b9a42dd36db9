"""Checkpoints, the metrics log and the data position: the pieces that make resume exact.

The algorithm here is a real, minimal implementation of the Algorithm seam's state methods
(one tensor saved with torch.save), so these tests need no DeepSpeed; the DeepSpeed state
itself is covered by the kill-and-resume integration test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlaif.data import Prompt
from rlaif.trainer.checkpoint import Checkpoints, complete_checkpoints
from rlaif.trainer.distributed import DistContext
from rlaif.trainer.loop import PromptSampler
from rlaif.trainer.metrics import MetricsLog, plot_rewards, summarize

RANK0 = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class TensorState:
    """The state half of the Algorithm seam, holding one tensor."""

    def __init__(self) -> None:
        self.weights = torch.zeros(3)

    def save_state(self, directory: Path) -> None:
        torch.save(self.weights, directory / "weights.pt")

    def load_state(self, directory: Path) -> None:
        self.weights = torch.load(directory / "weights.pt")


def test_keeps_the_newest_and_resumes_from_the_latest(tmp_path: Path) -> None:
    ckpts = Checkpoints(tmp_path, keep=2, ctx=RANK0)
    algo = TensorState()
    for step in (2, 4, 6):
        algo.weights = torch.full((3,), float(step))
        ckpts.save(step, algo, {"data_position": step * 2})
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4, 6]
    latest = ckpts.latest()
    assert latest is not None
    step, path = latest
    fresh = TensorState()
    meta = ckpts.load(path, fresh)
    assert step == 6 and meta["step"] == 6 and meta["data_position"] == 12
    assert torch.equal(fresh.weights, torch.full((3,), 6.0))


def test_half_written_checkpoints_are_ignored_and_cleaned(tmp_path: Path) -> None:
    Checkpoints(tmp_path, keep=3, ctx=RANK0).save(2, TensorState(), {})
    (tmp_path / ".tmp-step-00000004").mkdir()
    (tmp_path / ".tmp-step-00000004" / "weights.pt").write_bytes(b"torn")
    (tmp_path / "step-00000006").mkdir()  # no meta.json: never completed
    ckpts = Checkpoints(tmp_path, keep=3, ctx=RANK0)
    latest = ckpts.latest()
    assert latest is not None and latest[0] == 2
    assert not (tmp_path / ".tmp-step-00000004").exists()


def test_rng_states_are_restored(tmp_path: Path) -> None:
    ckpts = Checkpoints(tmp_path, keep=1, ctx=RANK0)
    torch.manual_seed(5)
    ckpts.save(1, TensorState(), {})
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    latest = ckpts.latest()
    assert latest is not None
    ckpts.load(latest[1], TensorState())
    again = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_metrics_log_truncates_to_the_checkpoint_once_per_step(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4, 3, 5):  # a crashed run re-logged step 3
        log.append({"step": step, "reward_mean": step / 10})
    with open(log.path, "a") as f:
        f.write('{"step": 6, "rew')  # torn by SIGKILL
    log.truncate_after(3)
    assert [r["step"] for r in log.records()] == [1, 2, 3]
    log.append({"step": 4, "reward_mean": 0.4})
    lines = log.path.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]


def test_summary_and_curve(tmp_path: Path) -> None:
    records = [{"step": s, "reward_mean": s / 10, "reward/asr": 1 - s / 10, "step_seconds": 2.0,
                "time_generate": 1.0, "samples_per_second": 4.0} for s in range(1, 11)]
    summary = summarize(records, window=3)
    assert summary["reward_first"] == pytest.approx(0.2)  # steps 1-3
    assert summary["reward_last"] == pytest.approx(0.9)  # steps 8-10
    assert summary["by_reward"]["asr"]["first"] == pytest.approx(0.8)
    assert summary["time_breakdown"]["generate"] == pytest.approx(10.0)
    plot_rewards(records, tmp_path / "curve.png", window=3)
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_prompt_sampler_is_a_pure_function_of_the_step() -> None:
    prompts = [Prompt(f"sentence {i}") for i in range(10)]
    ranks = [PromptSampler(prompts, 2, DistContext(r, 2, r, torch.device("cpu")), seed=3,
                           shuffle=True) for r in range(2)]
    epoch = [p.text for step in (1, 2) for s in ranks for p in s.batch(step)]
    assert len(set(epoch[:8])) == 8  # no prompt twice within the first epoch's steps
    fresh = PromptSampler(prompts, 2, DistContext(1, 2, 1, torch.device("cpu")), 3, True)
    assert [p.text for p in fresh.batch(7)] == [p.text for p in ranks[1].batch(7)]
    assert ranks[0].position(5) == 20


def test_weight_watcher_reports_edited_weights_once(tmp_path: Path) -> None:
    import os

    import yaml

    from rlaif.api.validation import load_job
    from rlaif.config import RewardEndpoint, TrainerConfig
    from rlaif.trainer.loop import WeightWatcher
    from tests.conftest import EXAMPLES

    spec = load_job(EXAMPLES / "quickstart-cpu.yaml").spec
    config = TrainerConfig(job_name="q", spec=spec, output_dir=str(tmp_path), rewards=[
        RewardEndpoint(name=r.name, url="http://x:1", weight=r.weight) for r in spec.rewards])
    path = tmp_path / "trainer.yaml"
    path.write_text(config.dump())
    watcher = WeightWatcher(path)
    assert watcher.changed() is None
    data = yaml.safe_load(path.read_text())
    data["rewards"][0]["weight"] = 0.9
    path.write_text(yaml.safe_dump(data))
    os.utime(path, ns=(1, 10**18))  # a distinct mtime even on coarse clocks
    assert watcher.changed() == {"intelligibility": 0.9, "alignment": 0.5, "naturalness": 0.2}
    assert watcher.changed() is None
    assert WeightWatcher(None).changed() is None
