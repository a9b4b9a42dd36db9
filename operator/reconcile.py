"""One reconciliation of an RLAIFJob or a RewardServer: observe children, decide with the
pure functions (``job_status.plan``, ``server_status``), make the children match, write
status. Level-based and idempotent, so it is safe to run again at any time, from a timer,
after a watch event, or in a restarted or second operator replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rlaif import constants as c
from rlaif.api.models import RewardServer, RLAIFJob
from rlaif.api.validation import server_rule_errors
from rlaif.operator import admission, conditions, metrics
from rlaif.operator import job_builders as jb
from rlaif.operator import server_builders as sb
from rlaif.operator.job_status import (
    TERMINAL,
    Limits,
    Observed,
    Plan,
    RewardState,
    plan,
    reward_hacking,
)
from rlaif.operator.kube import ApiError, OwnershipConflict, Session, controller_of
from rlaif.operator.meta import (
    KUEUE_QUEUE_LABEL,
    TEMPLATE_HASH_ANNOTATION,
    Manifest,
    drifted,
    owned,
)
from rlaif.operator.server_status import problem_of, server_status
from rlaif.operator.settings import OperatorConfig
from rlaif.operator.workloads import WorkloadState, summarize_job

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
WAITING_REASONS = {"Labeling", "CreatingTrainers", "StartingTrainers", "RewardsNotReady",
                   "Suspended", "Starting", "ScaledToZero", "Restarting", "Queued"}
"""Ready=False reasons that are expected on the way up: Normal events, not Warnings."""
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
RESUME_ANNOTATION = f"{c.GROUP}/resume-replicas"
"""On a job-owned RewardServer scaled to 0 for a suspension: the replicas it had (which a
user or an autoscaler may have set), restored on resume."""


@dataclass
class Outcome:
    """What a reconciliation changed: the status written and the Events to post."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message)."""
    retry: bool = False
    """The API server refused a child write: try again soon (ChildrenReady says why)."""
    deferred: bool = False
    """Nothing was written or posted: see ``_report``."""


def _api_error(exc: ApiError) -> tuple[tuple[int, str, str, list[str]], str]:
    """(error, call) for ``conditions.children_condition``."""
    return (exc.status, exc.reason, exc.detail, exc.fields), f"{exc.method} {exc.path}"


def _ns(body: Manifest) -> str | None:
    return body["metadata"].get("namespace")


def _write_status(kube: Session, body: Manifest, kind: str, status: dict[str, Any]) -> bool:
    """Patch status only when it changed (an unchanged patch would wake every watcher), and
    only if the object is still the version this reconciliation read (resourceVersion
    precondition: a stale writer gets 409 and retries on fresh data)."""
    current = body.get("status") or {}
    if all(current.get(k) == v for k, v in status.items()):
        return False
    ns, name = _ns(body), body["metadata"]["name"]
    seen = (kube.get(c.API_VERSION, kind, ns, name) or body)["metadata"]
    patch: dict[str, Any] = {"status": status}
    if seen.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": seen["resourceVersion"]}
    kube.patch(c.API_VERSION, kind, ns, name, patch, subresource="status")
    return True


def _report(kube: Session, body: Manifest, kind: str, new: dict[str, Any],
            events: list[tuple[str, str, str]], defer: bool) -> Outcome:
    """Write the status and return its Events, or, with ``defer`` when this pass created
    children, neither: the status describes the cluster before they existed, and their
    watch events bring the object back within moments to describe them (a new job's first
    status would say "reward server missing" just after creating it, a new server's
    "0 replicas" just before its Deployment's first status). The caller defers at most one
    pass in a row, so a child that keeps vanishing cannot hold the status back."""
    if defer and kube.created:
        return Outcome(new, deferred=True)
    _write_status(kube, body, kind, new)
    return Outcome(new, events)


def _conflict(kube: Session, body: Manifest, kind: str, exc: OwnershipConflict,
              now: datetime) -> Outcome:
    """Report an object in the way: Ready=False naming it; nothing else is touched."""
    old = list((body.get("status") or {}).get("conditions") or [])
    conds = conditions.set_condition(old, c.COND_READY, False, "OwnershipConflict", str(exc), now)
    new = {"conditions": conds}
    _write_status(kube, body, kind, new)
    return Outcome(new, _events(old, conds))


def _events(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """One Event per (type, reason) among the conditions that changed: transitions that share
    a reason (Ready=False and RewardsReady=False, both RewardsNotReady) are one Event naming
    both ("Ready=False, RewardsReady=False: waiting for ..."), not one API request each.
    ChildrenReady set True for the first time is no news (nothing was ever refused), and no
    Event: only its later changes are."""
    merged: dict[tuple[str, str], dict[str, list[str]]] = {}
    for cond in conditions.transitions(old, new):
        if (cond["type"] == conditions.CHILDREN_READY and cond["status"] == "True"
                and conditions.find(old, cond["type"]) is None):
            continue
        bad = (cond["type"] in (c.COND_FAILED, c.COND_REWARD_HACKING)
               and cond["status"] == "True") or (
            cond["type"] == c.COND_READY and cond["status"] == "False"
            and cond["reason"] not in WAITING_REASONS)
        key = ("Warning" if bad else "Normal", cond["reason"] or cond["type"])
        merged.setdefault(key, {}).setdefault(cond["message"], []).append(
            f"{cond['type']}={cond['status']}")
    return [(type_, reason, "; ".join(f"{', '.join(changes)}: {message}"
                                      for message, changes in by_message.items()))
            for (type_, reason), by_message in merged.items()]


# --------------------------------------------------------------------------- RLAIFJob


def _invalid(body: Manifest, errors: list[str], now: datetime) -> dict[str, Any]:
    message = "invalid spec: " + "; ".join(errors)
    conds = list((body.get("status") or {}).get("conditions") or [])
    for type_, value in ((c.COND_FAILED, True), (c.COND_READY, False)):
        conds = conditions.set_condition(conds, type_, value, "InvalidSpec", message, now)
    return {"phase": "Failed", "conditions": conds, "completionTime": conditions.now_iso(now)}


def _failed_reason(status: dict[str, Any]) -> str | None:
    failed = conditions.find(status.get("conditions") or [], c.COND_FAILED)
    return failed.get("reason") if failed and failed.get("status") == "True" else None


def _effective_job(kube: Session, body: Manifest, job: RLAIFJob) -> tuple[RLAIFJob, list[str]]:
    """The job as accepted: immutable fields keep the values the job started with."""
    accepted = admission.accepted_spec(body)
    if accepted is None:
        kube.patch(c.API_VERSION, c.JOB_KIND, _ns(body), body["metadata"]["name"],
                   {"metadata": {"annotations": admission.accepted_annotation(body["spec"])}})
        return job, []
    changes = admission.immutable_changes(accepted, body["spec"])
    if not changes:
        return job, []
    original = job.model_dump(by_alias=True, mode="json")
    original["spec"].update(accepted)
    return RLAIFJob.model_validate(original), changes


def _batch_job(kube: Session, ns: str | None, found: Manifest | None) -> WorkloadState | None:
    name = found["metadata"]["name"] if found else ""
    # A failed Job's pods are read from the API: the reason (exit 2, a preemption) decides
    # whether it counts, and the pods' watch may not have caught up with the Job's yet.
    failed = any(cond.get("type") == "Failed" and cond.get("status") == "True"
                 for cond in ((found or {}).get("status") or {}).get("conditions") or [])
    pods = kube.list("v1", "Pod", ns, {JOB_NAME_LABEL: name}, fresh=failed) if found else []
    # No pods of a Job that should have some: ask its Events why (quota, admission).
    starved = found is not None and not pods and not (found.get("spec") or {}).get("suspend") \
        and not (found.get("status") or {}).get("conditions")
    return summarize_job(found, pods, kube.events_for(ns, name) if starved else None)


def _trainer_jobs(kube: Session, body: Manifest, job: RLAIFJob) -> dict[int, Manifest]:
    """This job's trainer gang Jobs by attempt label; Jobs it does not control are ignored
    here (creating one with a taken name reports the conflict)."""
    found = kube.list("batch/v1", "Job", job.metadata.namespace,
                      {c.LABEL_JOB: job.metadata.name, c.LABEL_COMPONENT: jb.TRAINER})
    uid = body["metadata"]["uid"]
    return {int(attempt): j for j in found
            if (controller_of(j) or {}).get("uid") == uid
            and (attempt := j["metadata"]["labels"].get(jb.ATTEMPT_LABEL, "")).isdigit()}


def _reward_states(kube: Session, body: Manifest, job: RLAIFJob) -> list[RewardState]:
    states = []
    for reward in job.spec.rewards:
        name, ns = jb.reward_server_name(job, reward.name), job.metadata.namespace
        server = kube.get(c.API_VERSION, c.SERVER_KIND, ns, name) if reward.server_ref \
            else kube.get_owned(c.API_VERSION, c.SERVER_KIND, ns, name, body)
        st = (server or {}).get("status") or {}
        states.append(RewardState(
            name=reward.name, endpoint=st.get("endpoint") or sb.endpoint(name, ns),
            replicas=st.get("replicas") or 0, ready_replicas=st.get("readyReplicas") or 0,
            exists=server is not None, problem=problem_of(st)))
    return states


def _limits(job: RLAIFJob, cfg: OperatorConfig) -> Limits:
    rp = job.spec.run_policy
    return Limits(backoff_limit=rp.backoff_limit, active_deadline=rp.active_deadline_seconds,
                  rewards_timeout=rp.rewards_ready_timeout_seconds,
                  start_timeout=cfg.start_timeout, restart_backoff=cfg.restart_backoff)


def _sync_config(kube: Session, owner: Manifest, job: RLAIFJob) -> None:
    """Create the ConfigMap, or update it in place (reward weights apply live)."""
    built = owned(jb.build_config_map(job), owner)
    existing = kube.ensure(built)
    if drifted(existing.get("data"), built["data"]):
        kube.patch("v1", "ConfigMap", job.metadata.namespace, built["metadata"]["name"],
                   {"data": built["data"]})


def _sync_network_policy(kube: Session, owner: Manifest, job: RLAIFJob,
                         scraper: jb.Scraper | None) -> None:
    built = owned(jb.build_network_policy(job, scraper), owner)
    existing = kube.ensure(built)
    if drifted(existing.get("spec"), built["spec"]):
        kube.patch("networking.k8s.io/v1", "NetworkPolicy", job.metadata.namespace,
                   built["metadata"]["name"], {"spec": built["spec"]})


def server_spec_patch(current: Manifest, built: Manifest) -> Manifest | None:
    """The merge patch that makes an owned RewardServer's spec what the job's reward builds
    (replicas aside), or None when it already is: a field the reward no longer sets is
    removed (a merge patch keeps what it does not name)."""
    want = {k: v for k, v in built.items() if k != "replicas"}
    gone = {k: None for k in current if k not in want and k != "replicas"}
    return {**want, **gone} if gone or drifted(current, want) else None


def _sync_rewards(kube: Session, owner: Manifest, job: RLAIFJob,
                  scraper: jb.Scraper | None) -> None:
    """Owned RewardServers follow the job's spec, except replicas: those are set at creation
    and then belong to whoever scales the server (``kubectl scale``, an autoscaler). Only a
    suspension takes them to 0, remembering them for the resume."""
    _sync_network_policy(kube, owner, job, scraper)
    stop = job.spec.run_policy.suspend and not job.spec.run_policy.keep_reward_servers
    for server in jb.build_reward_servers(job):
        spec = server["spec"]
        if stop:
            server["metadata"].setdefault("annotations", {})[RESUME_ANNOTATION] = \
                str(spec["replicas"])
            spec = {**spec, "replicas": 0}
        existing = kube.ensure(owned({**server, "spec": spec}, owner))
        name, ns = server["metadata"]["name"], job.metadata.namespace
        current = existing.get("spec") or {}
        patch: dict[str, Any] = {}
        if (fields := server_spec_patch(current, spec)) is not None:
            patch["spec"] = fields
        saved = (existing["metadata"].get("annotations") or {}).get(RESUME_ANNOTATION)
        replicas = int(current.get("replicas") or 0)
        if stop and replicas != 0:
            patch.setdefault("spec", {})["replicas"] = 0
            patch["metadata"] = {"annotations": {RESUME_ANNOTATION: str(replicas)}}
        elif not stop and saved is not None:
            patch.setdefault("spec", {})["replicas"] = int(saved) if saved.isdigit() \
                else spec["replicas"]
            patch["metadata"] = {"annotations": {RESUME_ANNOTATION: None}}
        if patch:
            kube.patch(c.API_VERSION, c.SERVER_KIND, ns, name, patch)


def _sync_trainer(kube: Session, owner: Manifest, job: RLAIFJob, p: Plan,
                  gangs: dict[int, Manifest], status: dict[str, Any], now: datetime,
                  wait_seconds: int) -> None:
    """The gang attempt the plan wants exists; older attempts are deleted only after it does,
    so a crash in between leaves the cluster telling which attempt is current."""
    ns, suspended = job.metadata.namespace, job.spec.run_policy.suspend
    kube.ensure(owned(jb.build_trainer_service(job), owner))
    deadline = job.spec.run_policy.active_deadline_seconds
    start = conditions.parse_time(status.get("startTime"))
    if deadline is not None and start is not None:
        deadline = max(1, int(deadline - (now - start).total_seconds()))
    # Kueue admits a queued Job by unsuspending it: never unsuspend one ourselves.
    queued = KUEUE_QUEUE_LABEL in job.metadata.labels
    if (group := jb.build_pod_group(job)) is not None:
        kube.ensure(owned(group, owner))
    body = jb.build_trainer_job(job, p.attempt, suspend=suspended or queued,
                                deadline_seconds=deadline, wait_seconds=wait_seconds)
    existing = kube.ensure(owned(body, owner))
    if suspended and not (existing.get("spec") or {}).get("suspend"):
        kube.patch("batch/v1", "Job", ns, body["metadata"]["name"], {"spec": {"suspend": True}})
    elif not suspended and not queued and (existing.get("spec") or {}).get("suspend"):
        kube.patch("batch/v1", "Job", ns, body["metadata"]["name"], {"spec": {"suspend": False}})
    for attempt, gang in gangs.items():
        if attempt < p.attempt:
            kube.delete("batch/v1", "Job", ns, gang["metadata"]["name"])


def release_rewards(kube: Session, body: Manifest, job: RLAIFJob, now: datetime) -> Outcome:
    """A finished job's own reward servers go to 0 replicas, freeing their GPUs (unless
    runPolicy.keepRewardServers); a condition and an Event say so, once."""
    status = body.get("status") or {}
    old = list(status.get("conditions") or [])
    done = conditions.find(old, c.COND_REWARDS_READY)
    servers = [s["metadata"]["name"] for s in jb.build_reward_servers(job)]
    if job.spec.run_policy.keep_reward_servers or not servers or (
            done and done.get("reason") == "ScaledToZero"):
        return Outcome()
    ns = job.metadata.namespace
    for name in servers:
        found = kube.get_owned(c.API_VERSION, c.SERVER_KIND, ns, name, body)
        if found is not None and (found.get("spec") or {}).get("replicas") != 0:
            kube.patch(c.API_VERSION, c.SERVER_KIND, ns, name, {"spec": {"replicas": 0}})
    conds = conditions.set_condition(
        old, c.COND_REWARDS_READY, False, "ScaledToZero",
        f"the job {status.get('phase', '').lower()}: reward server(s) {', '.join(servers)} "
        f"scaled to 0 replicas (runPolicy.keepRewardServers: true keeps them)", now)
    own = {r.name for r in job.spec.rewards if r.server_ref is None}
    new = {"conditions": conds, "rewards": [
        {**r, "replicas": 0, "readyReplicas": 0} if r.get("name") in own else r
        for r in status.get("rewards") or []]}
    _write_status(kube, body, c.JOB_KIND, new)
    return Outcome(new, _events(old, conds))


def _scrape(kube: Session, job: RLAIFJob, attempt: int) -> dict[str, Any]:
    """Rank 0's gauges, or nothing while it is not serving yet."""
    name = jb.trainer_job_name(job, attempt)
    pods = kube.list("v1", "Pod", job.metadata.namespace, {JOB_NAME_LABEL: name})
    rank0 = [p for p in pods
             if ((p["metadata"].get("annotations") or {}).get(INDEX_ANNOTATION, "0")) == "0"]
    url = metrics.metrics_url(rank0[0], job.spec.trainer.metrics_port) if rank0 else None
    if url is None:
        return {}
    try:
        return metrics.status_from_metrics(metrics.scrape(url))
    except (OSError, ValueError):
        return {}


def reconcile_job(kube: Session, body: Manifest, cfg: OperatorConfig, now: datetime,
                  scrape: bool = False, defer: bool = False) -> Outcome:
    """Bring one RLAIFJob's children and status up to date (``defer``: see ``_report``)."""
    status = dict(body.get("status") or {})
    parsed, errors = admission.parse_job(body)
    restart = parsed is not None and _failed_reason(status) == "InvalidSpec"
    try:
        if status.get("phase") in TERMINAL and not restart:
            return release_rewards(kube, body, parsed, now) if parsed else Outcome()
        if restart:  # the spec was fixed after it failed validation: start from the beginning
            status = {}
        if parsed is None:
            failed = _invalid(body, errors, now)
            _write_status(kube, body, c.JOB_KIND, failed)
            return Outcome(failed, _events(status.get("conditions") or [], failed["conditions"]))
        return _reconcile_valid(kube, body, parsed, status, cfg, now, scrape, restart, defer)
    except OwnershipConflict as exc:
        return _conflict(kube, body, c.JOB_KIND, exc, now)


def _reconcile_valid(kube: Session, body: Manifest, parsed: RLAIFJob, status: dict[str, Any],
                     cfg: OperatorConfig, now: datetime, scrape: bool, restart: bool,
                     defer: bool) -> Outcome:
    job, refused = _effective_job(kube, body, parsed)
    ns = job.metadata.namespace
    gangs = _trainer_jobs(kube, body, job)
    attempt = max(gangs) if gangs else int(status.get("attempt") or status.get("restarts") or 0)
    labeling = kube.get_owned("batch/v1", "Job", ns, jb.labeling_job_name(job), body) \
        if job.spec.labeling else None
    obs = Observed(
        labeling_required=job.spec.labeling is not None, suspended=job.spec.run_policy.suspend,
        labeling=_batch_job(kube, ns, labeling) if job.spec.labeling else None,
        rewards=_reward_states(kube, body, job),
        trainer=_batch_job(kube, ns, gangs.get(attempt)), nodes=job.spec.trainer.nodes,
        attempt=attempt, queued=KUEUE_QUEUE_LABEL in job.metadata.labels)
    p = plan(status, obs, _limits(job, cfg), now)

    refused_write: ApiError | None = None
    try:
        if p.labeling or p.rewards or p.trainer:
            _sync_config(kube, body, job)
        if p.labeling:
            kube.ensure(owned(jb.build_labeling_job(job), body))  # type: ignore[arg-type]
        if p.rewards:
            _sync_rewards(kube, body, job, cfg.scraper())
        if p.trainer:
            _sync_trainer(kube, body, job, p, gangs, status, now, cfg.start_timeout)
        if p.stop_trainer and obs.trainer is not None and (
                not obs.trainer.failed or p.phase == "Suspended"):
            kube.delete("batch/v1", "Job", ns, jb.trainer_job_name(job, attempt))
    except ApiError as exc:  # quota, RBAC, admission, a refused field: said in status
        refused_write = exc

    conds = p.conditions
    if p.labeling or p.rewards or p.trainer or refused_write is not None:
        error, call = _api_error(refused_write) if refused_write else (None, "")
        conds = conditions.children_condition(conds, error, call, now)
        if refused_write is not None:  # the summary says it too (kubectl get rj -o wide)
            failed = conditions.find(conds, conditions.CHILDREN_READY) or {}
            conds = conditions.set_condition(conds, c.COND_READY, False, failed["reason"],
                                             failed["message"], now)
    if refused:
        conds = conditions.set_condition(conds, c.COND_READY, False, "ImmutableFieldChanged",
                                         "; ".join(refused), now)
    new: dict[str, Any] = {
        "phase": p.phase, "conditions": conds, "restarts": p.restarts, "attempt": p.attempt,
        "totalSteps": status.get("totalSteps") or job.spec.steps,
        "rewards": [{"name": r.name, "endpoint": r.endpoint, "replicas": r.replicas,
                     "readyReplicas": r.ready_replicas} for r in obs.rewards],
        **p.status,
    }
    if (generation := body["metadata"].get("generation")) is not None:
        new["observedGeneration"] = generation
    if restart:
        new["completionTime"] = None
    if scrape and p.phase == "Running":
        new.update(_scrape(kube, job, p.attempt))
        if ckpt := new.get("lastCheckpoint"):
            prev = status.get("lastCheckpoint") or {}
            same = prev.get("step") == ckpt["step"]
            ckpt["time"] = prev.get("time") if same else conditions.now_iso(now)
        if (evaluation := new.get("evaluation")) is not None:
            conds = new["conditions"] = reward_hacking(conds, evaluation.pop("hacking", []), now)
    events = _events(status.get("conditions") or [], conds)
    if "failedAttempt" in p.status:
        counted = f"restart {p.restarts} of backoffLimit {job.spec.run_policy.backoff_limit}" \
            if p.restarts != int(status.get("restarts") or 0) else \
            "after a disruption, not counted against backoffLimit"
        events.append(("Warning", "GangRestart", f"trainer gang attempt {attempt} failed "
                       f"({obs.trainer.reason if obs.trainer else ''}): {counted}"))
    if refused_write is not None or "failedAttempt" in p.status:
        # A refusal is news; a counted failure (restarts, disruptions) cannot be counted
        # again by the next pass, which sees only the successor the counting pass created.
        _write_status(kube, body, c.JOB_KIND, new)
        return Outcome(new, events, retry=refused_write is not None)
    return _report(kube, body, c.JOB_KIND, new, events, defer)


def next_visit(body: Manifest, outcome: Outcome, interval: float, now: datetime
               ) -> float | None:
    """Seconds until a job must be reconciled again with nothing changing around it: every
    ``interval`` until it finishes (timeouts, backoff, metrics), then once when its
    ttlSecondsAfterFinished runs out; None when only a change can matter. A job that has
    just finished comes back at once, to release its reward servers."""
    status = {**(body.get("status") or {}), **outcome.status}
    if status.get("phase") not in TERMINAL:
        return interval
    if (body.get("status") or {}).get("phase") not in TERMINAL:
        return 0.0
    ttl = ((body.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    done = conditions.parse_time(status.get("completionTime"))
    if ttl is None or done is None:
        return None
    return max(1.0, ttl - (now - done).total_seconds())


def expired(body: Manifest, now: datetime) -> bool:
    """A finished job whose ttlSecondsAfterFinished has passed (the operator deletes it)."""
    ttl = ((body.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    done = conditions.parse_time((body.get("status") or {}).get("completionTime"))
    phase = (body.get("status") or {}).get("phase")
    return ttl is not None and done is not None and phase in TERMINAL and \
        (now - done).total_seconds() >= ttl


# --------------------------------------------------------------------------- RewardServer


def deployment_patch(existing: Manifest, built: Manifest) -> Manifest | None:
    """The patch that makes a reward Deployment match what we built, or None when nothing we
    set differs: the pod template by the hash of what we built (the API server adds defaults
    we must not fight), the rest as normalised values. Replicas follow the RewardServer's
    spec.replicas, which is where ``kubectl scale`` and an autoscaler write."""
    have_spec, want_spec = existing.get("spec") or {}, built["spec"]
    key = TEMPLATE_HASH_ANNOTATION
    hashed = (existing["metadata"].get("annotations") or {}).get(key) == \
        built["metadata"]["annotations"][key]
    rest = {k: v for k, v in want_spec.items() if k != "template"}
    if hashed and not drifted(have_spec, rest):
        return None
    return {"metadata": {"annotations": built["metadata"]["annotations"]},
            "spec": rest if hashed else want_spec}


def reconcile_server(kube: Session, body: Manifest, now: datetime, defer: bool = False
                     ) -> Outcome:
    """Bring one RewardServer's Deployment, Service, PDB and status up to date (``defer``:
    see ``_report``)."""
    old = dict(body.get("status") or {})
    try:
        server = RewardServer.model_validate(admission.manifest_part(body))
        errors = [str(e) for e in server_rule_errors(server)]
    except ValueError as exc:
        server, errors = None, [str(exc)]
    if server is None or errors:
        conds = conditions.set_condition(list(old.get("conditions") or []), c.COND_READY, False,
                                         "InvalidSpec", "invalid spec: " + "; ".join(errors), now)
        new = {"conditions": conds}
        _write_status(kube, body, c.SERVER_KIND, new)
        return Outcome(new, _events(old.get("conditions") or [], conds))
    try:
        return _reconcile_server_children(kube, body, server, old, now, defer)
    except OwnershipConflict as exc:
        return _conflict(kube, body, c.SERVER_KIND, exc, now)


def _reconcile_server_children(kube: Session, body: Manifest, server: RewardServer,
                               old: dict[str, Any], now: datetime, defer: bool) -> Outcome:
    ns = server.metadata.namespace
    try:
        deployment = _sync_server_children(kube, body, server)
    except ApiError as exc:  # quota, RBAC, admission, a refused field: said in status
        error, call = _api_error(exc)
        conds = conditions.children_condition(list(old.get("conditions") or []), error, call,
                                              now)
        new = {"conditions": conds}
        _write_status(kube, body, c.SERVER_KIND, new)
        return Outcome(new, _events(old.get("conditions") or [], conds), retry=True)
    pods = kube.list("v1", "Pod", ns, sb.server_selector(server))
    new = server_status(server, deployment, pods, old, now)
    new["conditions"] = conditions.children_condition(new["conditions"], None, "", now)
    if (generation := body["metadata"].get("generation")) is not None:
        new["observedGeneration"] = generation
    return _report(kube, body, c.SERVER_KIND, new,
                   _events(old.get("conditions") or [], new["conditions"]), defer)


def _sync_server_children(kube: Session, body: Manifest, server: RewardServer) -> Manifest:
    """The server's Deployment (returned), Service, PDB and label-schema ConfigMap."""
    ns, name = server.metadata.namespace, server.metadata.name
    if (labels_cm := sb.build_label_config(server)) is not None:
        kube.ensure(owned(labels_cm, body))
    built = owned(sb.build_deployment(server), body)
    deployment = kube.ensure(built)
    if (patch := deployment_patch(deployment, built)) is not None:
        deployment = kube.patch("apps/v1", "Deployment", ns, name, patch) or deployment
    kube.ensure(owned(sb.build_service(server), body))
    pdb = sb.build_pdb(server)
    if pdb is not None:
        kube.ensure(owned(pdb, body))
    elif kube.get_owned("policy/v1", "PodDisruptionBudget", ns, name, body) is not None:
        kube.delete("policy/v1", "PodDisruptionBudget", ns, name)
    hpa = sb.build_hpa(server)
    if hpa is not None:
        existing = kube.ensure(owned(hpa, body))
        if drifted(existing.get("spec"), hpa["spec"]):
            kube.patch(HPA[0], HPA[1], ns, name, {"spec": hpa["spec"]})
    elif kube.get_owned(*HPA, ns, name, body) is not None:
        kube.delete(*HPA, ns, name)
    return deployment
