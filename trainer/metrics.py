"""Step metrics: the JSONL log, the Prometheus endpoint, the summary and the reward curve.

Only rank 0 writes. metrics.jsonl has one JSON object per step, each step exactly once:
on resume the lines past the checkpoint are dropped before training continues. JSON has no
NaN: a figure that could not be computed (no scorable sample) is written as null, and a
Prometheus gauge shows NaN, which the operator's scrape leaves out of the status.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rlaif.files import atomic_write_text, fsync_dir
from rlaif.trainer.evaluation import Best, Hacking, metric, metric_names

Record = dict[str, Any]

TENSORBOARD_DIR = "tensorboard"
"""Under the output directory: TensorBoard event files (with the tensorboard extra)."""
PHASES = ("generate", "reward_wait", "update", "other")
"""The step-time breakdown, each as ``time_<phase>`` seconds in a record."""

GAUGES = {
    "rlaif_step": ("step", "Last completed training step."),
    "rlaif_total_steps": ("total_steps", "Steps the job will run."),
    "rlaif_reward_mean": ("reward_mean", "Mean total (weighted) reward of the last step."),
    "rlaif_reward_std": ("reward_std", "Std of the total reward of the last step."),
    "rlaif_kl": ("kl", "Mean k3 KL to the reference policy."),
    "rlaif_loss": ("loss", "Policy loss."),
    "rlaif_clip_fraction": ("clip_fraction", "Fraction of tokens where the PPO clip acted."),
    "rlaif_entropy": ("entropy", "Mean sampling entropy per token."),
    "rlaif_completion_length": ("completion_length", "Mean generated tokens per sample."),
    "rlaif_step_seconds": ("step_seconds", "Wall time of the last step."),
    "rlaif_samples_per_second": ("samples_per_second", "Samples generated and scored per "
                                                       "second, all ranks."),
    "rlaif_last_checkpoint_step": ("last_checkpoint_step", "Step of the newest checkpoint."),
    "rlaif_reward_unscorable": ("reward_unscorable", "Share of the last step's samples that "
                                                     "could not be scored (NaN total)."),
    "rlaif_rollout_staleness": ("staleness", "Policy updates between sampling the last "
                                             "step's rollout and training on it (0 or 1)."),
    "rlaif_update_skipped": ("skipped", "1 when the last step did not update the policy (no "
                                        "reward spread, or mostly unscorable samples)."),
}


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON (null for a figure that could not be computed): every reader parses it."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


class MetricsLog:
    """Append-only metrics.jsonl, fsynced per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def records(self) -> list[Record]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line from a crash
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Keep only steps <= ``step`` (once each, and each held-out evaluation once),
        dropping torn lines: resume continues here."""
        kept: dict[tuple[int, int], Record] = {}
        for rec in self.records():
            if isinstance(rec.get("step"), int) and rec["step"] <= step:
                kept.setdefault((rec["step"], "kind" in rec), rec)
        text = "".join(dumps(kept[s]) + "\n" for s in sorted(kept))
        atomic_write_text(self.path, text)

    def append(self, record: Record) -> None:
        new = not self.path.exists()
        with open(self.path, "a") as f:
            f.write(dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if new:
            fsync_dir(self.path.parent)


class PrometheusExporter:
    """``/metrics`` on rank 0 (scraped by the operator into RLAIFJob.status)."""

    def __init__(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.gauges = {key: Gauge(name, doc, registry=self.registry)
                       for name, (key, doc) in GAUGES.items()}
        self.by_reward = Gauge("rlaif_reward_mean_by_name", "Mean score of one reward [0, 1].",
                               ["reward"], registry=self.registry)
        self.unscorable_by_reward = Gauge(
            "rlaif_reward_unscorable_by_name", "Share of the last step's samples one reward "
            "could not score.", ["reward"], registry=self.registry)
        self.phase = Gauge("rlaif_step_phase_seconds", "Step-time breakdown of the last step.",
                           ["phase"], registry=self.registry)
        self.eval_step = Gauge("rlaif_eval_step", "Last step evaluated on the held-out "
                               "prompts.", registry=self.registry)
        self.eval_score = Gauge("rlaif_eval_score", "Latest held-out value of "
                                "spec.evaluation.bestMetric.", registry=self.registry)
        self.eval_best_step = Gauge("rlaif_eval_best_step", "Step of the best checkpoint by "
                                    "bestMetric (exported to best/).", registry=self.registry)
        self.eval_value = Gauge("rlaif_eval", "Latest held-out value of one metric.",
                                ["metric"], registry=self.registry)
        self.eval_best = Gauge("rlaif_eval_best", "Best held-out value so far of one metric.",
                               ["metric"], registry=self.registry)
        self.hacking = Gauge("rlaif_reward_hacking", "1 while a reward-hacking guard rule is "
                             "broken (the message label holds the figures).",
                             ["metric", "rule", "message"], registry=self.registry)
        for unset in (self.eval_step, self.eval_score, self.eval_best_step):
            unset.set(math.nan)  # not 0: until this process evaluates, the operator keeps the
            # status it has (a resumed run's best so far), and a run without one shows none
        self.server, self.thread = start_http_server(port, registry=self.registry)

    def update(self, record: Record) -> None:
        """Set every gauge the record has; a None figure shows as NaN (not the stale value)."""
        for key, gauge in self.gauges.items():
            if key in record:
                gauge.set(_gauge_value(record[key]))
        by_name = {"reward": self.by_reward, "reward_unscorable": self.unscorable_by_reward}
        for key, value in record.items():
            prefix, _, name = key.partition("/")
            if prefix in by_name and name and "/" not in name:
                by_name[prefix].labels(reward=name).set(_gauge_value(value))
        for phase in PHASES:
            self.phase.labels(phase=phase).set(record.get(f"time_{phase}", 0.0))

    def update_eval(self, row: Record, best: Best, hacking: list[Hacking]) -> None:
        """A held-out evaluation: each metric's value and best so far, and the guard's
        findings (replacing the previous evaluation's)."""
        self.eval_step.set(row["step"])
        for name in metric_names(row):
            self.eval_value.labels(metric=name).set(_gauge_value(metric(row, name)))
        for name, value in best.values.items():
            self.eval_best.labels(metric=name).set(value)
        self.eval_score.set(_gauge_value(metric(row, best.metric)))
        self.eval_best_step.set(_gauge_value(best.step))
        self.hacking.clear()
        for found in hacking:
            self.hacking.labels(metric=found.metric, rule=found.rule,
                                message=found.message).set(1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TensorBoardLog:
    """Scalars of every row and held-out audio, as TensorBoard event files (the optional
    ``tensorboard`` extra); ``open`` returns None where it is not installed."""

    def __init__(self, writer: Any, directory: Path) -> None:
        self.writer, self.directory = writer, directory

    @classmethod
    def open(cls, directory: Path) -> TensorBoardLog | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            return None
        return cls(SummaryWriter(log_dir=str(directory)), directory)

    def scalars(self, record: Record) -> None:
        """Every finite figure of a row: ``train/<key>`` or the row's own ``eval/<metric>``."""
        for key, value in record.items():
            if key in ("step", "kind") or not _finite(value) or isinstance(value, bool):
                continue
            tag = key if key.startswith("eval/") else f"train/{key}"
            self.writer.add_scalar(tag, float(value), record["step"])
        self.writer.flush()

    def audio(self, tag: str, wave: np.ndarray, step: int, rate: int) -> None:
        self.writer.add_audio(tag, np.clip(wave, -1, 1), step, sample_rate=rate)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _gauge_value(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def window_mean(records: list[Record], key: str, first: bool, n: int) -> float | None:
    """Mean of ``key`` over the first (or last) ``n`` records that have a finite value."""
    values = [r[key] for r in records if _finite(r.get(key))]
    part = values[:n] if first else values[-n:]
    return float(sum(part) / len(part)) if part else None


def summarize(records: list[Record], window: int = 5) -> Record:
    """Run totals: steps, reward at the start and the end (means over ``window`` steps)."""
    window = max(1, window)
    reward_keys = sorted({k for r in records for k in r if k.startswith("reward/")})
    summary: Record = {
        "steps": len(records),
        "window_steps": window,
        "last_step": records[-1]["step"] if records else 0,
        "reward_first": window_mean(records, "reward_mean", True, window),
        "reward_last": window_mean(records, "reward_mean", False, window),
        "seconds": sum(r.get("step_seconds", 0.0) for r in records),
        "samples_per_second": window_mean(records, "samples_per_second", False, len(records)),
        "by_reward": {k.split("/", 1)[1]: {"first": window_mean(records, k, True, window),
                                           "last": window_mean(records, k, False, window)}
                      for k in reward_keys},
        "time_breakdown": {p: sum(r.get(f"time_{p}", 0.0) for r in records) for p in PHASES},
        "steps_skipped_unscorable": sum(1 for r in records if r.get("skipped_unscorable")),
    }
    return summary


def write_summary(path: Path, summary: Record) -> None:
    atomic_write_text(path, dumps(summary, indent=1))


def plot_rewards(records: Iterable[Record], path: Path, window: int = 1) -> None:
    """The reward curve: total and each reward's mean per step, plus the total's moving mean
    over ``window`` steps (one epoch of prompts: steps see different prompts, so single
    steps are noisy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    totals = curve(records, "reward_mean")
    ax.plot(steps, totals, lw=2, label="total")
    if window > 1 and len(records) >= window:
        ax.plot(steps[window - 1:], moving_mean(totals, window), "k--", lw=2,
                label=f"total, mean of {window} steps")
    for key in sorted({k for r in records for k in r if k.startswith("reward/")}):
        ax.plot(steps, curve(records, key), lw=1, alpha=0.8, label=key.split("/", 1)[1])
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def curve(records: list[Record], key: str) -> np.ndarray:
    """``key`` per record as floats; a missing or null figure (a step with no scorable
    sample) is NaN, which matplotlib draws as a gap."""
    return np.array([float(r[key]) if _finite(r.get(key)) else math.nan for r in records])


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each ``window`` consecutive values, over those that are finite (NaN if none)."""
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="valid")
    counts = np.convolve(finite.astype(float), kernel, mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)
