"""The RLAIFJob state machine as one pure function: observations in, phase, conditions and
the next step out. The handlers only observe, call ``plan`` and carry the step out, so a
restarted operator reaches the same decision from the same cluster state.

Pending -> [Labeling] -> Starting -> Running -> Succeeded | Failed, and Suspended in between.
Every waiting state has a timeout that ends in Failed with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
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


@dataclass
class Observed:
    labeling_required: bool
    suspended: bool
    labeling: WorkloadState | None
    rewards: list[RewardState]
    trainer: WorkloadState | None
    nodes: int


@dataclass
class Plan:
    """What the handler writes to status and which children it makes sure exist."""

    phase: str
    conditions: list[dict[str, Any]]
    restarts: int
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
        return Plan(phase, old, restarts)
    out = Plan("Pending", old, restarts)

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
                                                   "reward servers scaled to zero")
        b.set(c.COND_RUNNING, False, "Suspended", "the job is suspended")
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
        if trainer.reason == "DeadlineExceeded":
            return finish(False, "DeadlineExceeded", trainer.message)
        if restarts >= limits.backoff_limit:
            return finish(False, "BackoffLimitExceeded",
                          f"the trainer gang failed {restarts + 1} time(s) (backoffLimit "
                          f"{limits.backoff_limit}); last failure: {trainer.reason}: "
                          f"{trainer.message}")
        out.restarts = restarts + 1
        b.set(c.COND_RUNNING, False, "Restarting", f"restart {out.restarts} of "
              f"{limits.backoff_limit} after {trainer.reason}: {trainer.message}")
        return waiting("Starting", "Restarting", f"restarting the trainer gang after "
                                                 f"{trainer.reason}: {trainer.message}")
    # Ranks may finish at slightly different times: a running gang stays Running.
    started = trainer.active >= obs.nodes or phase == "Running"
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
    if _elapsed(trainer.created, now) > limits.start_timeout:
        return finish(False, reason, f"trainer pods did not start within "
                                     f"{limits.start_timeout} s: {message}")
    b.set(c.COND_RUNNING, False, reason, message)
    return waiting("Starting", reason, message)
