"""What batch Jobs, Deployments and their pods are doing, summarised with a machine-readable
reason and a human message, so failures surface in status instead of staying in pod logs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rlaif.operator.conditions import parse_time

Manifest = dict[str, Any]

# Waiting reasons that mean a container will not start without someone fixing something.
STUCK_WAITING = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class WorkloadState:
    """A batch Job (one trainer gang attempt, or the labelling Job), summarised."""

    active: int = 0
    ready: int = 0
    succeeded: bool = False
    failed: bool = False
    reason: str = ""
    message: str = ""
    problem: Problem | None = None
    """Why pods are not running yet (Unschedulable, ImagePullBackOff, ...)."""
    created: datetime | None = None
    exit_code: int | None = None
    """The root-cause pod's exit code (of a failed Job)."""
    disrupted: bool = False
    """The root cause was a disruption (preemption, eviction, node drain or shutdown)."""
    suspended: bool = False
    """spec.suspend is set (a queue such as Kueue has not admitted the Job yet)."""
    started: datetime | None = None
    """When the Job controller last started (or resumed) it: status.startTime."""


def _terminated_problem(name: str, term: Manifest) -> Problem | None:
    code = term.get("exitCode", 0)
    if term.get("reason") == "OOMKilled":
        return Problem("OOMKilled", f"container {name} was killed for exceeding its memory "
                                    f"limit (exit code {code})")
    if code != 0:
        tail = (term.get("message") or "").strip().splitlines()[-3:]
        detail = f": {' | '.join(tail)}" if tail else ""
        return Problem("ExitCode", f"container {name} exited with code {code}{detail}")
    return None


def pod_problem(pod: Manifest) -> Problem | None:
    """The most telling problem of one pod: a failed or stuck container, or unschedulable."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return Problem(cond.get("reason") or "Unschedulable",
                           cond.get("message") or "pod cannot be scheduled")
    boxes = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for box in boxes:
        state = box.get("state") or {}
        if (term := state.get("terminated")) and (p := _terminated_problem(box["name"], term)):
            return p
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            last = (box.get("lastState") or {}).get("terminated")
            extra = _terminated_problem(box["name"], last) if last else None
            message = waiting.get("message") or f"container {box['name']} is {waiting['reason']}"
            if extra is not None:
                message = f"{message}; last run: {extra.message}"
            return Problem(waiting["reason"], message)
    return None


def disruption(pod: Manifest) -> Problem | None:
    """The pod's DisruptionTarget condition: Kubernetes took it away, it did not crash."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return Problem(cond.get("reason") or "DisruptionTarget",
                           cond.get("message") or "the pod was disrupted")
    return None


def _exit(pod: Manifest) -> tuple[str, int | None]:
    """(finishedAt, exit code) of the pod's first container to end with an error."""
    ended = [t for box in (pod.get("status") or {}).get("containerStatuses") or []
             if (t := (box.get("state") or {}).get("terminated")) and t.get("exitCode")]
    if not ended:
        return "~", None  # sorts after every timestamp
    first = min(ended, key=lambda t: t.get("finishedAt") or "~")
    return first.get("finishedAt") or "~", first.get("exitCode")


SIGTERM_EXIT = 143


def root_cause(pods: list[Manifest]) -> tuple[Manifest | None, int | None]:
    """The pod whose failure brought the gang down, and its exit code: the first to end, a
    disrupted pod before its siblings, and never a sibling's SIGTERM (143) if another pod
    failed in the same second."""
    failing = [p for p in pods if disruption(p) or _exit(p)[1] is not None]
    if not failing:
        return None, None

    def order(pod: Manifest) -> tuple[str, bool, bool]:
        at, code = _exit(pod)
        return at, disruption(pod) is None, code == SIGTERM_EXIT

    pod = min(failing, key=order)
    return pod, _exit(pod)[1]


def first_problem(pods: list[Manifest]) -> Problem | None:
    return next((p for pod in pods if (p := pod_problem(pod)) is not None), None)


def creation_problem(events: list[Manifest]) -> Problem | None:
    """Why a controller could not create pods at all (quota, admission, PSS), from the newest
    FailedCreate Event it posted; pods that were never created have no status to read."""
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if not failed:
        return None
    newest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return Problem("FailedCreate", newest.get("message") or "pods could not be created")


def deployment_problem(deployment: Manifest | None) -> Problem | None:
    """A Deployment's own failure conditions (quota via ReplicaFailure, stuck rollouts)."""
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return Problem(cond.get("reason") or "FailedCreate", cond.get("message") or "")
        if (cond.get("type") == "Progressing" and cond.get("status") == "False"
                and cond.get("reason") == "ProgressDeadlineExceeded"):
            return Problem("ProgressDeadlineExceeded", cond.get("message") or "")
    return None


def _job_condition(job: Manifest, type_: str) -> Manifest | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def summarize_job(job: Manifest | None, pods: list[Manifest],
                  events: list[Manifest] | None = None) -> WorkloadState | None:
    """A batch Job, its pods and its Events; failure reasons come from the pods when they
    tell more, or from the Events when no pod could be created."""
    if job is None:
        return None
    status = job.get("status") or {}
    created = parse_time((job.get("metadata") or {}).get("creationTimestamp"))
    problem = first_problem(pods) or (None if pods else creation_problem(events or []))
    base: dict[str, Any] = {"active": status.get("active") or 0,
                            "ready": status.get("ready") or 0, "problem": problem,
                            "created": created, "started": parse_time(status.get("startTime")),
                            "suspended": bool((job.get("spec") or {}).get("suspend"))}
    if _job_condition(job, "Complete"):
        return WorkloadState(**base, succeeded=True, reason="Completed")
    if failed := _job_condition(job, "Failed"):
        reason = failed.get("reason") or "Failed"
        message = failed.get("message") or "the Job failed"
        root, code = root_cause(pods)
        cause = (disruption(root) or pod_problem(root)) if root is not None else problem
        if reason != "DeadlineExceeded" and cause is not None:
            reason, message = cause.reason, cause.message
            if root is not None:
                message = f"pod {root['metadata'].get('name')}: {message}"
        disrupted = root is not None and disruption(root) is not None
        return WorkloadState(**base, failed=True, reason=reason, message=message,
                             exit_code=code, disrupted=disrupted)
    return WorkloadState(**base)


def deployment_ready(deployment: Manifest | None) -> tuple[int, int]:
    """(replicas, readyReplicas) of a Deployment as its controller reports them."""
    if deployment is None:
        return 0, 0
    status = deployment.get("status") or {}
    return status.get("replicas") or 0, status.get("readyReplicas") or 0
