"""Unscorable samples from the reward client to the status: a failed score is NaN, the total
it enters is NaN, the step's figures leave it out, and what reaches metrics.jsonl,
summary.json, the reward curve, Prometheus and the operator's status is never NaN."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rlaif.operator.metrics import status_from_metrics
from rlaif.reward_client import RewardScores, weighted_total
from rlaif.rewards.scoring import ScoreResult
from rlaif.runner import Progress
from rlaif.trainer.distributed import free_port
from rlaif.trainer.loop import StepRewards
from rlaif.trainer.metrics import (
    MetricsLog,
    PrometheusExporter,
    plot_rewards,
    summarize,
    write_summary,
)

NAN = math.nan


def strict_json(text: str) -> object:
    """Parse as a strict reader would: NaN and Infinity are not JSON."""
    def reject(token: str) -> None:
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=reject)


def scores(per_reward: dict[str, list[float]], weights: dict[str, float]) -> RewardScores:
    columns = {n: np.array(v, dtype=np.float64) for n, v in per_reward.items()}
    details = {n: [{"error": f"{n} failed on s{i}"} if math.isnan(x) else {"wer": 0.1}
                   for i, x in enumerate(v)] for n, v in per_reward.items()}
    return RewardScores(ids=[f"s{i}" for i in range(len(next(iter(per_reward.values()))))],
                        total=weighted_total(weights, columns), per_reward=columns,
                        details=details,
                        errors={n: int(np.isnan(c).sum()) for n, c in columns.items()})


def test_a_failed_component_makes_the_total_unscorable_unless_weighted_zero() -> None:
    per_reward = {"asr": np.array([0.5, NAN, 1.0]), "judge": np.array([1.0, 1.0, NAN])}
    total = weighted_total({"asr": 0.3, "judge": 0.7}, per_reward)
    assert total[0] == pytest.approx(0.85) and np.isnan(total[1]) and np.isnan(total[2])
    ignored = weighted_total({"asr": 1.0, "judge": 0.0}, per_reward)
    np.testing.assert_allclose(ignored, [0.5, NAN, 1.0])  # judge's NaN does not poison


def test_step_figures_use_the_scorable_samples_and_count_the_rest() -> None:
    step = StepRewards.gather(scores({"asr": [0.2, NAN, 0.6, NAN], "judge": [1, 1, 1, NAN]},
                                     {"asr": 1.0, "judge": 1.0}))
    record = step.metrics()
    assert record["reward_mean"] == pytest.approx(1.4)  # (1.2 + 1.6) / 2, not / 4
    assert record["reward_std"] == pytest.approx(0.2)
    assert record["reward/asr"] == pytest.approx(0.4) and record["reward/judge"] == 1.0
    assert record["reward_unscorable"] == 0.5 and record["reward_unscorable/asr"] == 0.5
    assert record["reward_unscorable/judge"] == 0.25 and record["reward_errors/asr"] == 2.0
    assert not step.too_few_scorable()  # exactly half: still trains
    assert "reward 'asr': 2 of 4 failed, e.g. 'asr failed on s1'" in step.describe_failures()


def test_a_mostly_unscorable_step_is_flagged_and_has_no_reward_figure() -> None:
    step = StepRewards.gather(scores({"asr": [NAN, NAN, NAN], "judge": [0.5, 0.5, 0.5]},
                                     {"asr": 0.3, "judge": 0.7}))
    assert step.too_few_scorable() and step.unscorable == 1.0
    record = step.metrics()
    assert record["reward_mean"] is None and record["reward_std"] is None
    assert record["reward/asr"] is None and record["reward/judge"] == 0.5
    assert "judge" not in step.describe_failures()


def test_files_hold_null_never_nan(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 1, "reward_mean": 0.5, "reward/asr": 0.5, "step_seconds": 1.0})
    log.append({"step": 2, "reward_mean": None, "reward/asr": NAN, "loss": math.inf,
                "skipped_unscorable": 1.0, "step_seconds": 1.0})
    log.append({"step": 3, "reward_mean": 0.7, "reward/asr": 0.7, "step_seconds": 1.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    second = strict_json(lines[1])
    assert isinstance(second, dict)
    assert second["reward_mean"] is None and second["reward/asr"] is None
    assert second["loss"] is None
    log.truncate_after(2)
    assert [strict_json(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    records = [*log.records(), {"step": 3, "reward_mean": 0.7, "reward/asr": 0.7}]
    summary = summarize(records, window=2)
    assert summary["reward_first"] == pytest.approx(0.6)  # steps 1 and 3: 2 has none
    assert summary["steps_skipped_unscorable"] == 1
    write_summary(tmp_path / "summary.json", {**summary, "odd": NAN})
    assert strict_json((tmp_path / "summary.json").read_text())
    plot_rewards(records, tmp_path / "curve.png", window=2)
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_prometheus_shows_nan_and_the_status_leaves_it_out() -> None:
    exporter = PrometheusExporter(port := free_port())
    try:
        exporter.update({"step": 3, "reward_mean": 0.6, "reward/asr": 0.6,
                         "reward_unscorable": 0.0, "skipped": 0.0})
        exporter.update({"step": 4, "reward_mean": None, "reward_std": None, "reward/asr": None,
                         "reward/judge": 0.5, "reward_unscorable": 0.75,
                         "reward_unscorable/asr": 0.75, "skipped": 1.0})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        exporter.close()
    assert "rlaif_reward_mean NaN" in text  # not the stale 0.6 of step 3
    assert 'rlaif_reward_unscorable_by_name{reward="asr"} 0.75' in text
    assert "rlaif_update_skipped 1.0" in text
    status = status_from_metrics(text)
    assert status["step"] == 4
    metrics = status["metrics"]
    assert metrics["unscorable"] == 0.75 and metrics["reward_judge"] == 0.5
    assert not {"reward", "rewardStd", "reward_asr"} & set(metrics)
    json.dumps(status, allow_nan=False)


def test_progress_line_survives_a_step_without_a_reward(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    progress = Progress(total=4, plain=True)
    progress.update({"step": 2, "total_steps": 4, "reward_mean": None, "step_seconds": 1.5})
    assert "step 2/4 reward n/a (1.5 s)" in capsys.readouterr().out


@pytest.mark.parametrize("value, score", [(-0.2, 0.0), (0.4, 0.4), (1.3, 1.0)])
def test_a_model_score_is_clamped_to_the_unit_range(value: float, score: float) -> None:
    result = ScoreResult.clipped(value, {"raw": value})
    assert (result.score, result.error, result.details) == (score, None, {"raw": value})


def test_a_nan_model_output_is_an_item_error_not_a_zero() -> None:
    result = ScoreResult.clipped(NAN, {"cosine": NAN})
    assert result.error is not None and "NaN" in result.error
