"""Held-out evaluation maths and the reward-hacking guard on rows, the Prometheus gauges the
operator reads back, and the closing lines: pure functions, no models."""

from __future__ import annotations

import json
import math
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from rlaif import constants as c
from rlaif.api.models import DivergenceRule, GuardSpec, RLAIFJob
from rlaif.cli import main
from rlaif.config import TrainerConfig
from rlaif.operator import job_builders as jb
from rlaif.operator.metrics import status_from_metrics
from rlaif.runner import EXIT_INVALID, _heldout_note, follow_metrics, heldout_line
from rlaif.trainer.distributed import free_port
from rlaif.trainer.evaluation import (
    Best,
    check_guard,
    eval_row,
    heldout_scores,
    paired_difference,
    paired_metrics,
    sample_rows,
)
from rlaif.trainer.metrics import PrometheusExporter
from tests.conftest import EXAMPLES


def row(step: int, train: float | None, **metrics: float | None) -> dict:
    return {"kind": "eval", "step": step, "train_reward": train,
            **{f"eval/{k}": v for k, v in metrics.items()}}


def test_paired_interval_is_the_t_interval_of_the_differences() -> None:
    rng = np.random.default_rng(0)
    before = rng.uniform(0, 1, 40)
    after = before + 0.05 + rng.normal(0, 0.02, 40)  # a small shift under a wide spread
    d = paired_difference(before, after)
    assert d is not None and d.n == 40 and d.significant and d.low > 0
    diff = after - before
    low, high = stats.t.interval(0.95, 39, loc=diff.mean(), scale=stats.sem(diff))
    assert (d.low, d.high) == pytest.approx((low, high))
    # unpaired, the same shift is lost in the prompt-to-prompt spread
    assert stats.ttest_ind(after, before).pvalue > 0.05


def test_pairs_with_a_nan_are_left_out_and_too_few_pairs_give_none() -> None:
    d = paired_difference([0.2, math.nan, 0.4, 0.5], [0.3, 0.9, math.nan, 0.7])
    assert d is not None and d.n == 2 and d.before == pytest.approx(0.35)
    assert paired_difference([0.1, math.nan], [0.2, 0.3]) is None
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([0.1], [0.1, 0.2])


def test_heldout_total_needs_every_training_reward() -> None:
    per = {"a": np.array([0.5, math.nan]), "b": np.array([1.0, 1.0]), "judge2": np.ones(2)}
    scores = heldout_scores(per, {"a": 0.4, "b": 0.6, "judge2": 0.0})
    assert scores["reward"][0] == pytest.approx(0.8) and math.isnan(scores["reward"][1])
    assert "reward" not in heldout_scores({"b": np.ones(2)}, {"a": 0.4, "b": 0.6})
    out = eval_row(8, scores, {"a/wer": 0.2}, 0.7)
    assert out["eval/reward"] == pytest.approx(0.8) and out["eval/a"] == pytest.approx(0.5)
    assert out["eval_unscorable"] == 0.5 and out["eval/a/wer"] == 0.2 and out["kind"] == "eval"


def test_samples_pair_by_prompt_and_sample_index() -> None:
    keys = [(0, 0), (0, 1), (1, 0)]
    base = sample_rows(keys, ["x", "x", "y"], {"m": np.array([0.1, 0.2, 0.3])},
                       {"m": [{}, {}, {}]})
    trained = sample_rows(keys[::-1], ["y", "x", "x"], {"m": np.array([0.6, 0.4, 0.2])},
                          {"m": [{}, {}, {}]})
    d = paired_metrics(base, trained)["m"]
    assert d.n == 3 and d.mean == pytest.approx(0.2)  # (0.1->0.2, 0.2->0.4, 0.3->0.6)


def test_best_so_far_follows_the_chosen_metric() -> None:
    best = Best("intelligibility", {})
    assert best.update(row(0, None, reward=0.5, intelligibility=0.8))
    assert not best.update(row(8, 0.6, reward=0.7, intelligibility=0.7))
    assert best.update(row(16, 0.7, reward=0.6, intelligibility=0.9))
    assert best.step == 16 and best.values == {"reward": 0.7, "intelligibility": 0.9}
    assert Best.from_rows([row(0, None, intelligibility=0.3)], "intelligibility").step == 0


GUARD = GuardSpec(minimum={"intelligibility": 0.5},
                  divergence=[DivergenceRule(metric="intelligibility", drop=0.1, evaluations=2)])


def test_the_guard_fires_when_the_reward_rises_as_the_held_out_metric_falls() -> None:
    rows = [row(0, None, intelligibility=0.9), row(8, 0.5, intelligibility=0.85),
            row(16, 0.7, intelligibility=0.72)]
    assert check_guard(rows[:2], GUARD, 0.4) == []  # not yet K evaluations
    # the base evaluation (step 0) has no training reward of its own: the first step's is
    # the base policy's, and without it there is no trend to judge
    assert check_guard(rows, GUARD) == []
    (found,) = check_guard(rows, GUARD, base_train=0.4)
    assert found.rule == "divergence" and found.metric == "intelligibility"
    assert "rose 0.400 -> 0.700" in found.message and "fell 0.900 -> 0.720" in found.message
    assert "steps 0 and 16" in found.message
    rows.append(row(24, 0.8, intelligibility=0.4))
    assert [f.rule for f in check_guard(rows, GUARD)] == ["minimum", "divergence"]


def test_the_guard_stays_quiet_when_both_move_together_or_the_drop_is_small() -> None:
    falling_reward = [row(0, 0.8, intelligibility=0.9), row(8, 0.7, intelligibility=0.8),
                      row(16, 0.6, intelligibility=0.6)]
    assert check_guard(falling_reward, GUARD) == []  # not hacking: the training reward fell
    small = [row(0, 0.5, intelligibility=0.9), row(8, 0.6, intelligibility=0.88),
             row(16, 0.7, intelligibility=0.85)]
    assert check_guard(small, GUARD) == []
    assert check_guard([row(0, None)], GUARD) == []  # unscorable metric: no verdict


def test_the_exporters_gauges_become_status_evaluation_and_the_finding() -> None:
    exporter = PrometheusExporter(free_port())
    try:
        rows = [row(0, None, reward=0.6, intelligibility=0.9),
                row(8, 0.7, reward=0.65, intelligibility=0.4)]
        best = Best.from_rows(rows, "reward")
        exporter.update_eval(rows[-1], best, check_guard(rows, GUARD))
        port = exporter.server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
            status = status_from_metrics(resp.read().decode())
    finally:
        exporter.close()
    evaluation = status["evaluation"]
    (finding,) = evaluation.pop("hacking")
    assert evaluation == {"step": 8, "score": 0.65, "bestStep": 8,
                          "metrics": {"reward": 0.65, "intelligibility": 0.4},
                          "best": {"reward": 0.65, "intelligibility": 0.9}}
    assert finding["rule"] == "minimum" and "below its minimum 0.500" in finding["message"]


def test_console_lines_report_the_held_out_change_with_its_interval() -> None:
    assert heldout_line(row(8, 0.7, reward=0.612, alignment=None)) == \
        "held-out at step 8: reward 0.612, alignment n/a"
    d = paired_difference([0.5, 0.6, 0.55, 0.4], [0.6, 0.7, 0.6, 0.5])
    assert d is not None
    note = _heldout_note({"best_metric": "reward", "first_step": 0, "last_step": 24,
                          "best_step": 16, "change": {"reward": vars(d)}})
    assert "held-out reward (steps 0 -> 24" in note and "95% CI +0.0" in note
    assert "best at step 16" in note and _heldout_note({}) == ""


def test_evaluators_get_their_own_servers_and_reach_the_trainer_with_weight_0() -> None:
    doc = yaml.safe_load((EXAMPLES / "quickstart-cpu.yaml").read_text())
    doc["metadata"]["namespace"] = "ml"
    doc["spec"]["evaluation"]["evaluators"] = [
        {"name": "heard", "kind": "asr", "model": "builtin:whisper-tiny.en"}]
    job = RLAIFJob.model_validate(doc)
    config = TrainerConfig.model_validate(yaml.safe_load(
        jb.build_config_map(job)["data"][c.CONFIG_FILE]))
    assert [e.name for e in config.rewards] == ["intelligibility", "alignment", "naturalness"]
    assert [(e.name, e.weight, e.url) for e in config.evaluators] == [
        ("heard", 0.0, "http://quickstart-heard.ml.svc:8080")]
    servers = {s["metadata"]["name"]: s["spec"] for s in jb.build_reward_servers(job)}
    assert servers["quickstart-heard"]["kind"] == "asr" and len(servers) == 4


def test_the_run_console_shows_the_base_evaluation_and_guard_findings(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    metrics = follow_metrics(path)
    assert next(metrics) == {}  # started before the trainer wrote anything
    base = {**row(0, None, reward=0.5), "hacking": []}
    fired = {**row(8, 0.7, reward=0.4), "hacking": [
        {"metric": "reward", "rule": "minimum", "message": "held-out reward 0.400 ..."}]}
    path.write_text("".join(json.dumps(r) + "\n" for r in (base, {"step": 1}, fired)))
    assert [r["step"] for r in iter(lambda: next(metrics), {})] == [0, 1, 8]
    assert heldout_line(fired).splitlines() == [
        "held-out at step 8: reward 0.400",
        "RewardHacking (minimum rule): held-out reward 0.400 ..."]
    resumed = follow_metrics(path, after_step=8)
    assert next(resumed) == {}
    path.write_text(path.read_text())  # a resume rewrites the file: step 0 is not new then
    assert list(iter(lambda: next(resumed), {})) == []


def test_rlaif_eval_refuses_what_it_cannot_compare_naming_the_option(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load((EXAMPLES / "quickstart-cpu.yaml").read_text())
    del doc["spec"]["evaluation"]
    shutil.copytree(EXAMPLES / "data", tmp_path / "data")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    out = str(tmp_path / "report")
    assert main(["eval", str(job), "--checkpoint", "base", "--out", out]) == EXIT_INVALID
    assert "no spec.evaluation; give --prompts FILE" in capsys.readouterr().err
    assert main(["eval", str(EXAMPLES / "quickstart-cpu.yaml"), "--checkpoint",
                 str(tmp_path), "--out", out]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"--checkpoint {tmp_path}: no trained policy here" in err
    assert "expected a LoRA adapter (adapter_config.json) or a full or merged model" in err
