"""The training loop shared by every algorithm: data, rewards, checkpoints, metrics.

Per step: take this rank's prompts, roll out (each group of audio goes to the reward
servers as soon as it is rendered, so scoring overlaps generation), wait for the
remaining scores, update, reduce the metrics over ranks, log on rank 0, checkpoint every
``checkpoint.everySteps``. A sample a reward server could not score has a NaN total: the
algorithm leaves it out of its group's statistics; a step where more than half the samples
(all ranks) are unscorable does not update at all (the reward servers are failing, and
what is left is too little to train on), and its record says so. A stop request (SIGTERM,
SIGINT, or a STOP file in the output directory) ends the run after the current step with a
checkpoint; every rank agrees on it.

With spec.grpo.asyncRollouts: 1, step t also rolls out step t+1's prompts right after its
own rollout, on the same weights, so step t+1's sampling, rendering and scoring overlap step
t's reward wait and update; step t+1 then trains on samples one update old (staleness 1).
That rollout is not checkpointed: a resumed run samples it again, on-policy, from the same
prompts (which prompts a step trains on depends only on the step number).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlaif.config import TrainerConfig
from rlaif.data import Prompt, load_prompts
from rlaif.reward_client import RewardClient, RewardScores, ScoreItem, weighted_total
from rlaif.trainer.algorithm import Algorithm, Rollout
from rlaif.trainer.audio import write_wav
from rlaif.trainer.checkpoint import Checkpoints
from rlaif.trainer.distributed import DistContext, all_any, all_gather_objects
from rlaif.trainer.evaluation import Hacking, metric, metric_names
from rlaif.trainer.heldout import (
    BEST_DIR,
    HeldOutEvaluation,
    Verdict,
    export_best,
    heldout_summary,
    log_eval_audio,
    merge_best,
)
from rlaif.trainer.metrics import (
    TENSORBOARD_DIR,
    MetricsLog,
    PrometheusExporter,
    Record,
    TensorBoardLog,
    plot_rewards,
    summarize,
    write_summary,
)

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STOPPED = 130
"""Stopped on request after writing a checkpoint; running again resumes."""

STOP_FILE = "STOP"
MAX_UNSCORABLE = 0.5
"""A step in which more than this share of all ranks' samples is unscorable is not trained."""
SPREAD_KEYS = {"param_norm"}
"""Figures that must agree across ranks; the record also carries their max - min spread."""


class PromptSampler:
    """Which prompts rank ``rank`` trains on at each step: a pure function of the step.

    Global position ``i`` maps to epoch ``i // n`` and a seeded permutation of that epoch,
    so resuming needs only the step number, and ranks never share a prompt within a step.
    """

    def __init__(self, prompts: Sequence[Prompt], per_rank: int, ctx: DistContext,
                 seed: int, shuffle: bool) -> None:
        self.prompts, self.per_rank, self.ctx = list(prompts), per_rank, ctx
        self.seed, self.shuffle = seed, shuffle
        self._epoch, self._order = -1, np.arange(len(self.prompts))

    @property
    def steps_per_epoch(self) -> int:
        per_step = self.per_rank * self.ctx.world_size
        return -(-len(self.prompts) // per_step)

    def position(self, step: int) -> int:
        """Prompts consumed by all ranks after ``step`` steps."""
        return step * self.per_rank * self.ctx.world_size

    def batch(self, step: int) -> list[Prompt]:
        """This rank's prompts for ``step`` (1-based)."""
        start = self.position(step - 1) + self.ctx.rank * self.per_rank
        return [self._at(start + j) for j in range(self.per_rank)]

    def _at(self, i: int) -> Prompt:
        epoch, k = divmod(i, len(self.prompts))
        if self.shuffle and epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))
        return self.prompts[int(self._order[k])]


@dataclass
class StopRequest:
    """Set by a signal or a STOP file; read once per step."""

    stop_file: Path | None = None
    flag: threading.Event = field(default_factory=threading.Event)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.flag.set())

    def requested(self) -> bool:
        return self.flag.is_set() or bool(self.stop_file and self.stop_file.exists())


class RewardCollector:
    """Turns rendered samples into reward requests, one per group (or all at once)."""

    def __init__(self, client: RewardClient, prompts: Sequence[Prompt], group_size: int,
                 step: int, rank: int, overlap: bool) -> None:
        self.client, self.prompts, self.group_size = client, prompts, group_size
        self.prefix, self.overlap = f"s{step}r{rank}-", overlap
        self.pending: list[ScoreItem] = []
        self.futures: list[Any] = []
        self.seen = 0

    def __call__(self, index: int, audio: np.ndarray) -> None:
        self.pending.append(ScoreItem.for_prompt(f"{self.prefix}{index}", audio,
                                                 self.prompts[index // self.group_size]))
        self.seen += 1
        if self.overlap and len(self.pending) == self.group_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.futures.append(self.client.submit(self.pending))
            self.pending = []

    def result(self, audio: Sequence[np.ndarray]) -> RewardScores:
        """All scores in rollout order (samples the algorithm never handed over sent now),
        totalled with the weights of now: requests sent a step ahead follow a weight change."""
        for i in range(self.seen, len(audio)):
            self(i, audio[i])
        self.flush()
        scores = RewardScores.concat([f.result() for f in self.futures])
        scores.total = weighted_total(self.client.weights, scores.per_reward)
        return scores

    def cancel(self) -> None:
        """Drop the requests still in flight (a rollout sampled ahead that will not train)."""
        for future in self.futures:
            future.cancel()


@dataclass
class PendingRollout:
    """A rollout whose reward requests are in flight, and the policy it was drawn from."""

    rollout: Rollout
    collector: RewardCollector
    version: int
    """The loop's update count when it was sampled: staleness is the count at training."""


def numeric_detail_means(scores: RewardScores) -> dict[str, float]:
    """Mean of each numeric detail a server reports (wer, mos, alignment...) per reward."""
    out: dict[str, float] = {}
    for name, details in scores.details.items():
        fields: dict[str, list[float]] = {}
        for d in details:
            for k, v in d.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    fields.setdefault(k, []).append(float(v))
        out.update({f"{name}/{k}": float(np.mean(v)) for k, v in fields.items()})
    return out


def finite_mean(values: Sequence[float]) -> float | None:
    """Mean of the finite values; None (null in JSON, which has no NaN) when there are none."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


@dataclass
class StepRewards:
    """One step's rewards on every rank: what the metrics and the unscorable rule need."""

    total: np.ndarray
    """Weighted totals, all ranks' samples; NaN where a sample could not be scored."""
    per_reward: dict[str, np.ndarray]
    first_error: dict[str, str]
    """Per reward, the first item error any rank saw (for the log)."""

    @classmethod
    def gather(cls, scores: RewardScores) -> StepRewards:
        """Every rank's scores (a collective: call it on every rank)."""
        errors = {n: e for n in scores.per_reward if (e := scores.first_error(n)) is not None}
        parts = all_gather_objects((scores.total, scores.per_reward, errors))
        first: dict[str, str] = {}
        for _, _, part in parts:
            for name, error in part.items():
                first.setdefault(name, error)
        return cls(total=np.concatenate([t for t, _, _ in parts]).astype(np.float64),
                   per_reward={n: np.concatenate([p[n] for _, p, _ in parts])
                               for n in scores.per_reward},
                   first_error=first)

    @property
    def unscorable(self) -> float:
        """Share of samples whose total is NaN."""
        return float(np.isnan(self.total).mean()) if len(self.total) else 0.0

    def too_few_scorable(self) -> bool:
        """More than MAX_UNSCORABLE of the samples could not be scored: skip the update."""
        return self.unscorable > MAX_UNSCORABLE

    def metrics(self) -> Record:
        """reward_mean/std over the scorable samples, each reward's mean, and what failed;
        a figure with no scorable sample behind it is None, never NaN."""
        scorable = self.total[~np.isnan(self.total)]
        record: Record = {
            "reward_mean": float(np.mean(scorable)) if len(scorable) else None,
            "reward_std": float(np.std(scorable)) if len(scorable) else None,
            "reward_unscorable": self.unscorable,
        }
        for name, scores in self.per_reward.items():
            failed = np.isnan(scores)
            record[f"reward/{name}"] = finite_mean(scores.tolist())
            record[f"reward_errors/{name}"] = float(failed.sum())
            record[f"reward_unscorable/{name}"] = float(failed.mean()) if len(scores) else 0.0
        return record

    def describe_failures(self) -> str:
        """Which rewards failed on how many samples, with an example error each."""
        return "; ".join(
            f"reward {name!r}: {int(np.isnan(s).sum())} of {len(s)} failed, e.g. "
            f"{self.first_error.get(name, '(no answer)')!r}"
            for name, s in self.per_reward.items() if np.isnan(s).any())


def reduce_record(local: dict[str, float]) -> Record:
    """Figures averaged over ranks (non-finite values left out: None when none is left)."""
    parts = all_gather_objects(local)
    keys = sorted({k for p in parts for k in p})
    record: Record = {k: finite_mean([p[k] for p in parts if k in p]) for k in keys}
    for key in SPREAD_KEYS & set(keys):
        values = [p[key] for p in parts if key in p]
        record[f"{key}_spread"] = float(max(values) - min(values))
    return record


class WeightWatcher:
    """Reward weights edited in the config file (a ConfigMap the operator updates when the
    job's weights change) apply from the next step. Rank 0 reads; every rank uses its view."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seen = self._mtime()

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns if self.path else None
        except OSError:
            return None

    def changed(self) -> dict[str, float] | None:
        """The new weights when the file changed since the last call (a collective)."""
        weights = None
        mtime = self._mtime()
        if self.path is not None and mtime != self.seen:
            self.seen = mtime
            try:
                weights = {r.name: r.weight for r in TrainerConfig.load(self.path).rewards}
            except (OSError, ValueError) as exc:  # a half-updated file: try next step
                log.warning("cannot re-read %s for reward weights: %s", self.path, exc)
                self.seen = None
        return all_gather_objects(weights)[0]


class TrainingLoop:
    def __init__(self, config: TrainerConfig, ctx: DistContext, algorithm: Algorithm,
                 client: RewardClient, *, overlap: bool = True,
                 stop: StopRequest | None = None, config_path: Path | None = None) -> None:
        self.config, self.ctx, self.algorithm, self.client = config, ctx, algorithm, client
        self.weights = WeightWatcher(config_path)
        self.spec = config.spec
        self.overlap = overlap
        self.out = Path(config.output_dir)
        self.stop = stop or StopRequest(self.out / STOP_FILE)
        prompts = load_prompts(config.resolve_path(self.spec.data.prompts),
                               self.spec.label_schema)
        settings = self.spec.grpo if self.spec.algorithm == "grpo" else self.spec.dlpo
        self.group_size, per_rank = settings.group_size, settings.batch_size
        self.sampler = PromptSampler(prompts, per_rank, ctx, self.spec.seed,
                                     self.spec.data.shuffle)
        self.checkpoints = Checkpoints(Path(config.checkpoint_dir), self.spec.checkpoint.keep,
                                       ctx)
        self.metrics = MetricsLog(self.out / "metrics.jsonl") if ctx.is_main else None
        self.exporter: PrometheusExporter | None = None
        self.tensorboard: TensorBoardLog | None = None
        self.heldout: HeldOutEvaluation | None = None
        self.last_checkpoint = 0
        self.ahead = self.spec.grpo.async_rollouts if self.spec.algorithm == "grpo" else 0
        self.updates = 0
        """Policy updates this process has made (what a rollout's staleness counts)."""
        self.prefetched: PendingRollout | None = None

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Train from the newest checkpoint to spec.steps; returns EXIT_OK or EXIT_STOPPED."""
        start = self._resume()
        if self.ctx.is_main:
            self.exporter = PrometheusExporter(self.config.metrics_port)
            self.exporter.update({"step": start, "total_steps": self.spec.steps,
                                  "last_checkpoint_step": start})
            self.tensorboard = TensorBoardLog.open(self.out / TENSORBOARD_DIR)
        if self.spec.evaluation is not None:
            self.heldout = HeldOutEvaluation(self.config, self.ctx, self.algorithm,
                                             self.metrics.records() if self.metrics else [])
            if self.exporter is not None and self.heldout.rows:  # a resume: /metrics keeps
                last = self.heldout.rows[-1]                      # the restored best
                self.exporter.update_eval(last, self.heldout.best,
                                          [Hacking(**h) for h in last.get("hacking", [])])
        try:
            if self.heldout is not None and self.heldout.due(start):
                # Step 0: the base policy, what every later evaluation pairs with. A resume
                # at a due step: its row is missing if the run died between the checkpoint
                # and the row (run() skips a step already recorded).
                self._evaluate(start)
            for step in range(start + 1, self.spec.steps + 1):
                record = self.step(step)
                verdict = self._evaluate_after(step, record)
                hacked = bool(verdict and verdict.hacking and self.spec.evaluation
                              and self.spec.evaluation.guard.on_hacking == "stop")
                stop = all_any(self.stop.requested())
                if step % self.spec.checkpoint.every_steps == 0 or step == self.spec.steps \
                        or stop or hacked:
                    self.save(step)
                    record["last_checkpoint_step"] = step
                self._log(record)
                if verdict is not None:
                    self._log_eval(verdict)
                if hacked:
                    log.error("reward hacking (spec.evaluation.guard.onHacking: stop): ending "
                              "the run at step %d; the best policy by held-out %s is in %s",
                              step, self.spec.evaluation.best_metric if self.spec.evaluation
                              else "", self.out / BEST_DIR)
                    self.finish()
                    return EXIT_OK
                if stop:
                    log.info("stop requested: checkpoint at step %d written, exiting", step)
                    return EXIT_STOPPED
            self.finish()
            return EXIT_OK
        finally:
            if self.prefetched is not None:  # stopped early: sampled again on resume
                self.prefetched.collector.cancel()
                self.prefetched = None
            for closing in (self.exporter, self.tensorboard, self.heldout):
                if closing is not None:
                    closing.close()

    def _resume(self) -> int:
        found = self.checkpoints.latest()
        start = 0
        if found is not None:
            step, path = found
            meta = self.checkpoints.load(path, self.algorithm)
            start = int(meta["step"])
            self.last_checkpoint = start
            log.info("resumed from %s (step %d)", path, step)
        if self.metrics is not None:
            self.metrics.truncate_after(start)
        return start

    def save(self, step: int) -> None:
        self.checkpoints.save(step, self.algorithm,
                              {"data_position": self.sampler.position(step)})
        self.last_checkpoint = step

    # ------------------------------------------------------------------ one step

    def step(self, step: int) -> Record:
        t0 = time.perf_counter()
        if (weights := self.weights.changed()) is not None:
            log.info("step %d: reward weights changed to %s", step, weights)
            self.client.set_weights(weights)
        pending = self.prefetched or self._roll_out(step)
        # asyncRollouts: the next step's samples, on the weights this step starts from
        self.prefetched = (self._roll_out(step + 1) if self.ahead and step < self.spec.steps
                           else None)
        rollout = pending.rollout
        rollout.staleness = self.updates - pending.version
        t1 = time.perf_counter()
        scores = pending.collector.result(rollout.audio)
        rewards = StepRewards.gather(scores)
        t2 = time.perf_counter()
        if rewards.too_few_scorable():  # every rank sees the same figures: all skip together
            update = {"skipped": 1.0, "skipped_unscorable": 1.0}
            if self.ctx.is_main:
                log.warning("step %d: %.0f%% of the samples could not be scored (%s); not "
                            "training on the rest: update skipped", step,
                            100 * rewards.unscorable, rewards.describe_failures())
        else:
            update = {"skipped": 0.0, **self.algorithm.update(rollout, scores.total),
                      "skipped_unscorable": 0.0}
        if not update["skipped"]:
            self.updates += 1
        t3 = time.perf_counter()
        local = {**rollout.stats, **update, **numeric_detail_means(scores),
                 "staleness": float(rollout.staleness),
                 "time_generate": t1 - t0, "time_reward_wait": t2 - t1, "time_update": t3 - t2}
        if self.ctx.is_main and step in (1, self.spec.steps):
            self._write_samples(step, rollout, scores)
        record = {**reduce_record(local), **rewards.metrics()}
        seconds = time.perf_counter() - t0
        record.update(step=step, total_steps=self.spec.steps, time=time.time(),
                      step_seconds=seconds, time_other=max(0.0, seconds - (t3 - t0)),
                      samples_per_second=len(scores.total) * self.ctx.world_size / seconds,
                      last_checkpoint_step=self.last_checkpoint)
        return record

    def _roll_out(self, step: int) -> PendingRollout:
        """Sample ``step``'s prompts on the current weights, sending each group to the reward
        servers as soon as it is rendered."""
        prompts = self.sampler.batch(step)
        collector = RewardCollector(self.client, prompts, self.group_size, step,
                                    self.ctx.rank, self.overlap)
        return PendingRollout(self.algorithm.rollout(prompts, on_audio=collector), collector,
                              self.updates)

    def _write_samples(self, step: int, rollout: Any, scores: RewardScores) -> None:
        describe = getattr(self.algorithm, "describe", None)
        names = describe(rollout) if describe else [""] * len(rollout.audio)
        folder = self.out / "samples" / f"step-{step:06d}"
        for i, (audio, name) in enumerate(zip(rollout.audio, names, strict=True)):
            reward = "unscorable" if np.isnan(scores.total[i]) else f"{scores.total[i]:.3f}"
            write_wav(folder / f"{i:02d}-reward{reward}.wav", audio)
            if name:
                with open(folder / "programs.txt", "a") as f:
                    f.write(f"{i:02d}\t{reward}\t{name}\n")

    def _log(self, record: Record) -> None:
        if self.metrics is not None:
            self.metrics.append(record)
        if self.exporter is not None:
            self.exporter.update(record)
        if self.tensorboard is not None:
            self.tensorboard.scalars(record)
        if self.ctx.is_main:
            log.info("step %d/%d reward %s±%s kl %s loss %s unscorable %.0f%% %.1fs%s",
                     record["step"], record["total_steps"], _figure(record["reward_mean"], 3),
                     _figure(record["reward_std"], 3), _figure(record.get("kl"), 4),
                     _figure(record.get("loss"), 4), 100 * record["reward_unscorable"],
                     record["step_seconds"],
                     " (update skipped)" if record.get("skipped_unscorable") else "")

    # ------------------------------------------------------------------ held-out evaluation

    def _evaluate_after(self, step: int, record: Record) -> Verdict | None:
        if self.heldout is None:
            return None
        self.heldout.observe(record)
        return self._evaluate(step, log_now=False) if self.heldout.due(step) else None

    def _evaluate(self, step: int, log_now: bool = True) -> Verdict:
        """Score the policy on the held-out prompts (every rank); export it to best/ when it
        is the best so far by spec.evaluation.bestMetric."""
        assert self.heldout is not None
        verdict = self.heldout.run(step)
        if verdict.improved:
            export_best(self.algorithm, self.out, step, self.ctx.is_main)
        if log_now:
            self._log_eval(verdict)
        return verdict

    def _log_eval(self, verdict: Verdict) -> None:
        if verdict.row is None or self.heldout is None:
            return
        row = verdict.row
        if self.metrics is not None:
            self.metrics.append(row)
        if self.exporter is not None:
            self.exporter.update_eval(row, self.heldout.best, verdict.hacking)
        if self.tensorboard is not None:
            self.tensorboard.scalars(row)
            log_eval_audio(self.tensorboard, self.out, row["step"])
        log.info("held-out evaluation at step %d: %s", row["step"], ", ".join(
            f"{name} {_figure(metric(row, name), 3)}" for name in metric_names(row)))
        for found in verdict.hacking:
            log.warning("RewardHacking (%s rule): %s", found.rule, found.message)

    # ------------------------------------------------------------------ end

    def finish(self) -> None:
        """Final adapter (every rank: ZeRO-3 gathers), then summary and curve on rank 0."""
        self.algorithm.save_final(self.out / "adapter")
        if self.metrics is None:
            return
        records = [r for r in self.metrics.records() if "kind" not in r]
        # first vs last epoch: the same prompts, so the change is the policy's, not the data's
        window = max(1, min(self.sampler.steps_per_epoch, len(records) // 3))
        summary = summarize(records, window)
        if self.heldout is not None:
            merge_best(self.spec, self.out)
            summary["evaluation"] = heldout_summary(self.out, self.heldout.rows,
                                                    self.heldout.best)
        write_summary(self.out / "summary.json", summary)
        plot_rewards(records, self.out / "reward_curve.png", window)


def _figure(value: float | None, digits: int) -> str:
    """A figure for the log line; "n/a" for one that could not be computed this step."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
