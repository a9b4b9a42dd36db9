"""The RLAIFJob state machine as one pure function: observations in, phase, conditions and
the next step out. The handlers only observe, call ``plan`` and carry the step out, so a
restarted operator reaches the same decision from the same cluster state.

Pending -> [Labeling] -> Starting [-> Queued] -> Running -> Succeeded | Failed, and Suspended
in between (Queued: Kueue holds the trainer gang, with no start timeout running).
Every waiting state has a timeout that ends in Failed with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rlaif import constants as c
from rlaif.operator import conditions as cond
from rlaif.operator.workloads import WorkloadState

TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class RewardState:
    """One reward's server as the job sees it."""

    name: str
    endpoint: str | None
    replicas: int
    ready_replicas: int
    exists: bool = True
    problem: str = ""

    @property
    def ready(self) -> bool:
        return self.exists and self.ready_replicas >= 1


@dataclass(frozen=True)
class Limits:
    """The job's run policy and the operator's waiting timeouts, in seconds."""

    backoff_limit: int
    active_deadline: int | None
    rewards_timeout: int
    start_timeout: int
    restart_backoff: float = 10.0
    """Seconds before the first gang restart; doubles per failure up to MAX_BACKOFF."""


MAX_BACKOFF = 600.0


def backoff_seconds(first: float, failures: int) -> float:
    """Exponential backoff, as the Job controller's: first, 2x, 4x, ... capped."""
    return min(MAX_BACKOFF, first * 2 ** max(0, failures - 1))


@dataclass
class Observed:
    labeling_required: bool
    suspended: bool
    labeling: WorkloadState | None
    rewards: list[RewardState]
    trainer: WorkloadState | None
    nodes: int
    attempt: int = 0
    """The newest trainer gang attempt the cluster has (from its Jobs' attempt labels)."""
    queued: bool = False
    """The job goes through a Kueue queue (Kueue, not the operator, unsuspends its Job)."""


@dataclass
class Plan:
    """What the handler writes to status and which children it makes sure exist."""

    phase: str
    conditions: list[dict[str, Any]]
    restarts: int
    attempt: int = 0
    """The gang attempt whose Job must exist (older ones are deleted once it does)."""
    labeling: bool = False
    rewards: bool = False
    trainer: bool = False
    stop_trainer: bool = False
    status: dict[str, Any] = field(default_factory=dict)


class _Builder:
    """Accumulates conditions; ``ready`` sets the summary condition last."""

    def __init__(self, old: list[dict[str, Any]], now: datetime):
        self.conditions, self.now = list(old), now

    def set(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.conditions = cond.set_condition(self.conditions, type_, status, reason, message,
                                             self.now)


def _elapsed(since: datetime | None, now: datetime) -> float:
    return (now - since).total_seconds() if since else 0.0


def _rewards_message(rewards: list[RewardState]) -> str:
    waiting = [r for r in rewards if not r.ready]
    parts = [f"{r.name} {r.ready_replicas}/{r.replicas} ready"
             + (" (server missing)" if not r.exists else "")
             + (f" ({r.problem})" if r.problem else "") for r in waiting]
    return "waiting for reward servers: " + ", ".join(parts)


def plan(status: dict[str, Any], obs: Observed, limits: Limits, now: datetime) -> Plan:
    """The next phase, conditions and step for a job, from what the cluster shows."""
    old = list(status.get("conditions") or [])
    b = _Builder(old, now)
    restarts = int(status.get("restarts") or 0)
    phase = status.get("phase") or "Pending"
    if phase in TERMINAL:
        return Plan(phase, old, restarts, obs.attempt)
    out = Plan("Pending", old, restarts, obs.attempt)

    def finish(ok: bool, reason: str, message: str) -> Plan:
        b.set(c.COND_SUCCEEDED if ok else c.COND_FAILED, True, reason, message)
        b.set(c.COND_RUNNING, False, reason, message)
        b.set(c.COND_READY, ok, reason, message)
        out.phase, out.conditions = ("Succeeded" if ok else "Failed"), b.conditions
        out.status["completionTime"] = cond.now_iso(now)
        out.stop_trainer = not ok
        return out

    def waiting(phase_: str, reason: str, message: str) -> Plan:
        b.set(c.COND_READY, False, reason, message)
        out.phase, out.conditions = phase_, b.conditions
        return out

    # Labelling comes first: reward servers would sit idle on their GPUs meanwhile.
    if obs.labeling_required and not cond.is_true(old, c.COND_LABELED):
        out.labeling = True
        lab = obs.labeling
        if lab is not None and lab.failed:
            b.set(c.COND_LABELED, False, "LabelingFailed", lab.message)
            return finish(False, "LabelingFailed", f"labelling Job failed: {lab.reason}: "
                                                   f"{lab.message}")
        if lab is None or not lab.succeeded:
            message = "labelling the prompts with the LLM"
            if lab is not None and lab.problem is not None:
                message = f"{message}; {lab.problem.reason}: {lab.problem.message}"
            b.set(c.COND_LABELED, False, "Labeling", message)
            return waiting("Labeling", "Labeling", message)
        b.set(c.COND_LABELED, True, "Labeled", "the prompts file is labelled")
        out.labeling = False

    out.rewards = True
    if obs.suspended:
        b.set(c.COND_SUSPENDED, True, "Suspended", "trainers stopped after a checkpoint; "
                                                   "own reward servers scaled to zero unless "
                                                   "runPolicy.keepRewardServers")
        b.set(c.COND_RUNNING, False, "Suspended", "the job is suspended")
        if obs.queued and obs.trainer is not None:
            # Kueue unsuspends the Jobs it admitted: the stopped gang is deleted instead (its
            # quota goes back to the queue) and a new attempt queues again on resume.
            out.stop_trainer, out.attempt = True, obs.attempt + 1
        else:
            out.trainer = obs.trainer is not None  # keep the (suspended) gang for resuming
        return waiting("Suspended", "Suspended", "the job is suspended (spec.runPolicy.suspend)")
    if cond.is_true(old, c.COND_SUSPENDED):
        b.set(c.COND_SUSPENDED, False, "Resumed", "the job was resumed")

    if all(r.ready for r in obs.rewards):
        b.set(c.COND_REWARDS_READY, True, "RewardsReady",
              f"{len(obs.rewards)} reward server(s) ready")
    else:
        message = _rewards_message(obs.rewards)
        b.set(c.COND_REWARDS_READY, False, "RewardsNotReady", message)
        if obs.queued and all(r.problem.startswith("SchedulingGated") for r in obs.rewards
                              if not r.ready):  # Kueue holds their pods: no timeout
            return waiting("Queued", "Queued", f"reward servers queued in Kueue; {message}")
        if _elapsed(cond.since(b.conditions, c.COND_REWARDS_READY), now) > limits.rewards_timeout:
            return finish(False, "RewardsNotReady", f"{message}: not ready within "
                                                    f"{limits.rewards_timeout} s")
        if obs.trainer is None:
            return waiting("Starting", "RewardsNotReady", message)

    start = cond.parse_time(status.get("startTime"))
    if limits.active_deadline and start and _elapsed(start, now) > limits.active_deadline:
        return finish(False, "DeadlineExceeded", f"the job ran longer than "
                                                 f"activeDeadlineSeconds={limits.active_deadline}")
    out.trainer = True
    trainer = obs.trainer
    if trainer is None:
        return waiting("Starting", "CreatingTrainers", "creating the trainer gang")
    if trainer.succeeded:
        return finish(True, "Completed", "training finished")
    if trainer.failed:
        cause = f"{trainer.reason}: {trainer.message}"
        if trainer.reason == "DeadlineExceeded":
            return finish(False, "DeadlineExceeded", trainer.message)
        if status.get("failedAttempt") != obs.attempt:  # a new failure: count it once
            if trainer.exit_code == c.EXIT_INVALID_CONFIG and not trainer.disrupted:
                return finish(False, "InvalidConfig", f"the trainer refused its configuration "
                                                      f"(exit code 2; a restart cannot help): "
                                                      f"{cause}")
            if not trainer.disrupted and restarts >= limits.backoff_limit:
                return finish(False, "BackoffLimitExceeded",
                              f"the trainer gang failed {restarts + 1} time(s) (backoffLimit "
                              f"{limits.backoff_limit}); last failure: {cause}")
            disruptions = int(status.get("disruptions") or 0) + trainer.disrupted
            out.restarts = restarts + (not trainer.disrupted)
            delay = backoff_seconds(limits.restart_backoff, out.restarts + disruptions)
            out.status.update(failedAttempt=obs.attempt, disruptions=disruptions,
                              restartAfter=cond.now_iso(now + timedelta(seconds=delay)))
        after = cond.parse_time(out.status.get("restartAfter") or status.get("restartAfter"))
        if after is None or now >= after:
            out.attempt, out.trainer = obs.attempt + 1, True
        counted = ("a disruption, not counted against backoffLimit" if trainer.disrupted
                   else f"restart {out.restarts} of backoffLimit {limits.backoff_limit}")
        message = f"{counted}, after {cause}"
        b.set(c.COND_RUNNING, False, "Restarting", message)
        return waiting("Starting", "Restarting", f"restarting the trainer gang ({message}); "
                       f"not before {cond.now_iso(after)}" if after else message)
    if trainer.suspended and obs.queued:  # no timeout: waiting for quota is not a fault
        b.set(c.COND_RUNNING, False, "Queued", "waiting for Kueue to admit the trainer gang")
        return waiting("Queued", "Queued", "the trainer gang is queued (Kueue has not admitted "
                                           "it yet)")
    # Running once every pod of the gang is ready (Job status.active counts pending pods);
    # ranks may finish at slightly different times: a running gang stays Running.
    started = trainer.ready >= obs.nodes or phase == "Running"
    if started and trainer.problem is None:
        b.set(c.COND_RUNNING, True, "Running", f"{obs.nodes} trainer pod(s) running")
        out.status.setdefault("startTime", status.get("startTime") or cond.now_iso(now))
        out.phase, out.conditions = "Running", b.conditions
        rewards_ok = cond.is_true(b.conditions, c.COND_REWARDS_READY)
        b.set(c.COND_READY, rewards_ok, "Running" if rewards_ok else "RewardsNotReady",
              "training" if rewards_ok else _rewards_message(obs.rewards))
        out.conditions = b.conditions
        return out
    reason, message = "StartingTrainers", "waiting for trainer pods to start"
    if trainer.problem is not None:
        reason, message = trainer.problem.reason, trainer.problem.message
    if _elapsed(trainer.started or trainer.created, now) > limits.start_timeout:
        return finish(False, reason, f"trainer pods did not start within "
                                     f"{limits.start_timeout} s: {message}")
    b.set(c.COND_RUNNING, False, reason, message)
    return waiting("Starting", reason, message)


HACKING_REASONS = {"minimum": "HeldOutBelowMinimum", "divergence": "HeldOutDiverged"}


def reward_hacking(conditions: list[dict[str, Any]], findings: list[dict[str, str]],
                   now: datetime) -> list[dict[str, Any]]:
    """The RewardHacking condition from the guard rules rank 0 reports broken (each with
    metric, rule and message): True with the figures while any is, False once none is."""
    if findings:
        first = findings[0]
        return cond.set_condition(conditions, c.COND_REWARD_HACKING, True,
                                  HACKING_REASONS.get(first.get("rule", ""), "RewardHacking"),
                                  "; ".join(f.get("message", "") for f in findings), now)
    if cond.find(conditions, c.COND_REWARD_HACKING) is None:
        return conditions
    return cond.set_condition(conditions, c.COND_REWARD_HACKING, False, "HeldOutHealthy",
                              "no guard rule is broken at the last held-out evaluation", now)
