"""Rank 0's Prometheus gauges -> RLAIFJob status (step, totalSteps, metrics summary)."""

from __future__ import annotations

import math
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from rlaif import constants as c

SUMMARY = {
    "rlaif_reward_mean": "reward",
    "rlaif_reward_std": "rewardStd",
    "rlaif_kl": "kl",
    "rlaif_loss": "loss",
    "rlaif_step_seconds": "stepSeconds",
    "rlaif_samples_per_second": "samplesPerSecond",
    "rlaif_reward_unscorable": "unscorable",
}
PER_REWARD = "rlaif_reward_mean_by_name"
SCRAPE_TIMEOUT_SECONDS = 3.0


def status_from_metrics(text: str) -> dict[str, Any]:
    """The status fields a Prometheus exposition carries; unknown and NaN samples are skipped.

    Per-reward means land in ``metrics`` as ``reward_<name>``."""
    out: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    evaluation: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            if math.isnan(value) or math.isinf(value):
                continue
            if sample.name == "rlaif_step":
                out["step"] = int(value)
            elif sample.name == "rlaif_total_steps":
                out["totalSteps"] = int(value)
            elif sample.name == "rlaif_last_checkpoint_step" and value >= 1:
                step = int(value)
                out["lastCheckpoint"] = {"step": step, "path": f"{c.CHECKPOINT_DIR}/"
                                         f"{c.CHECKPOINT_STEP_DIR.format(step=step)}"}
            elif sample.name in SUMMARY:
                metrics[SUMMARY[sample.name]] = value
            elif sample.name == PER_REWARD and "reward" in sample.labels:
                metrics[f"reward_{sample.labels['reward']}"] = value
            elif sample.name in EVALUATION or sample.name == HACKING:
                _evaluation(evaluation, sample.name, sample.labels, value)
    if metrics:
        out["metrics"] = metrics
    if evaluation.get("step") is not None:
        out["evaluation"] = evaluation
    return out


EVALUATION = {"rlaif_eval_step": "step", "rlaif_eval_score": "score",
              "rlaif_eval_best_step": "bestStep", "rlaif_eval": "metrics",
              "rlaif_eval_best": "best"}
"""The held-out gauges -> status.evaluation fields."""
HACKING = "rlaif_reward_hacking"


def _evaluation(out: dict[str, Any], name: str, labels: dict[str, str], value: float) -> None:
    """One held-out sample into status.evaluation; a broken guard rule into ``hacking`` (the
    operator turns it into the RewardHacking condition, not a status field)."""
    if name == HACKING:
        if value >= 1:
            out.setdefault("hacking", []).append(dict(labels))
    elif name in ("rlaif_eval", "rlaif_eval_best"):
        out.setdefault(EVALUATION[name], {})[labels.get("metric", "")] = value
    elif name in ("rlaif_eval_step", "rlaif_eval_best_step"):
        out[EVALUATION[name]] = int(value)
    else:
        out[EVALUATION[name]] = value


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> str:
    """GET a /metrics page (raises OSError when the trainer is not serving yet)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def metrics_url(pod: dict[str, Any], port: int) -> str | None:
    """Rank 0's metrics URL by pod IP (reachable from the operator; no DNS needed)."""
    ip = (pod.get("status") or {}).get("podIP")
    return f"http://{ip}:{port}/metrics" if ip else None
