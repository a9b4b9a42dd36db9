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
from rlaif.operator.job_status import TERMINAL, Limits, Observed, Plan, RewardState, plan
from rlaif.operator.kube import Session
from rlaif.operator.meta import KUEUE_QUEUE_LABEL, Manifest, owned
from rlaif.operator.server_status import problem_of, server_status
from rlaif.operator.settings import OperatorConfig
from rlaif.operator.workloads import WorkloadState, summarize_job

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
WAITING_REASONS = {"Labeling", "CreatingTrainers", "StartingTrainers", "RewardsNotReady",
                   "Suspended", "Starting", "ScaledToZero", "Restarting"}
"""Ready=False reasons that are expected on the way up: Normal events, not Warnings."""


@dataclass
class Outcome:
    """What a reconciliation changed: the status written and the Events to post."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message)."""


def _ns(body: Manifest) -> str | None:
    return body["metadata"].get("namespace")


def _write_status(kube: Session, body: Manifest, kind: str, status: dict[str, Any]) -> bool:
    """Patch status only when it changed (an unchanged patch would wake every watcher)."""
    current = body.get("status") or {}
    if all(current.get(k) == v for k, v in status.items()):
        return False
    kube.patch(c.API_VERSION, kind, _ns(body), body["metadata"]["name"], {"status": status},
               subresource="status")
    return True


def _events(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for cond in conditions.transitions(old, new):
        bad = (cond["type"] == c.COND_FAILED and cond["status"] == "True") or (
            cond["type"] == c.COND_READY and cond["status"] == "False"
            and cond["reason"] not in WAITING_REASONS)
        out.append(("Warning" if bad else "Normal", cond["reason"] or cond["type"],
                    f"{cond['type']}={cond['status']}: {cond['message']}"))
    return out


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


def _batch_job(kube: Session, ns: str | None, name: str) -> WorkloadState | None:
    found = kube.get("batch/v1", "Job", ns, name)
    pods = kube.list("v1", "Pod", ns, {JOB_NAME_LABEL: name}) if found else []
    # No pods of a Job that should have some: ask its Events why (quota, admission).
    starved = found is not None and not pods and not (found.get("spec") or {}).get("suspend") \
        and not (found.get("status") or {}).get("conditions")
    return summarize_job(found, pods, kube.events_for(ns, name) if starved else None)


def _reward_states(kube: Session, job: RLAIFJob) -> list[RewardState]:
    states = []
    for reward in job.spec.rewards:
        name = jb.reward_server_name(job, reward.name)
        server = kube.get(c.API_VERSION, c.SERVER_KIND, job.metadata.namespace, name)
        st = (server or {}).get("status") or {}
        states.append(RewardState(
            name=reward.name, endpoint=st.get("endpoint") or sb.endpoint(
                name, job.metadata.namespace),
            replicas=st.get("replicas") or 0, ready_replicas=st.get("readyReplicas") or 0,
            exists=server is not None, problem=problem_of(st)))
    return states


def _limits(job: RLAIFJob, cfg: OperatorConfig) -> Limits:
    rp = job.spec.run_policy
    return Limits(backoff_limit=rp.backoff_limit, active_deadline=rp.active_deadline_seconds,
                  rewards_timeout=rp.rewards_ready_timeout_seconds,
                  start_timeout=cfg.start_timeout)


def _sync_config(kube: Session, owner: Manifest, job: RLAIFJob) -> None:
    """Create the ConfigMap, or update it in place (reward weights apply live)."""
    built = owned(jb.build_config_map(job), owner)
    existing = kube.ensure(built)
    if existing.get("data") != built["data"]:
        kube.patch("v1", "ConfigMap", job.metadata.namespace, built["metadata"]["name"],
                   {"data": built["data"]})


def _sync_rewards(kube: Session, owner: Manifest, job: RLAIFJob) -> None:
    """Owned RewardServers follow the job's spec (replicas 0 while suspended)."""
    kube.ensure(owned(jb.build_network_policy(job), owner))
    for server in jb.build_reward_servers(job):
        if job.spec.run_policy.suspend:
            server["spec"]["replicas"] = 0
        existing = kube.ensure(owned(server, owner))
        current = existing.get("spec") or {}
        if any(current.get(k) != v for k, v in server["spec"].items()):
            kube.patch(c.API_VERSION, c.SERVER_KIND, job.metadata.namespace,
                       server["metadata"]["name"], {"spec": server["spec"]})


def _sync_trainer(kube: Session, owner: Manifest, job: RLAIFJob, p: Plan, attempt: int,
                  status: dict[str, Any], now: datetime) -> None:
    ns, suspended = job.metadata.namespace, job.spec.run_policy.suspend
    kube.ensure(owned(jb.build_trainer_service(job), owner))
    deadline = job.spec.run_policy.active_deadline_seconds
    start = conditions.parse_time(status.get("startTime"))
    if deadline is not None and start is not None:
        deadline = max(1, int(deadline - (now - start).total_seconds()))
    # Kueue admits a queued Job by unsuspending it: never unsuspend one ourselves.
    queued = KUEUE_QUEUE_LABEL in job.metadata.labels
    body = jb.build_trainer_job(job, p.restarts, suspend=suspended or queued,
                                deadline_seconds=deadline)
    existing = kube.ensure(owned(body, owner))
    if suspended and not (existing.get("spec") or {}).get("suspend"):
        kube.patch("batch/v1", "Job", ns, body["metadata"]["name"], {"spec": {"suspend": True}})
    elif not suspended and not queued and (existing.get("spec") or {}).get("suspend"):
        kube.patch("batch/v1", "Job", ns, body["metadata"]["name"], {"spec": {"suspend": False}})
    if p.restarts != attempt:
        kube.delete("batch/v1", "Job", ns, jb.trainer_job_name(job, attempt))


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
                  scrape: bool = False) -> Outcome:
    """Bring one RLAIFJob's children and status up to date."""
    status = dict(body.get("status") or {})
    parsed, errors = admission.parse_job(body)
    restart = parsed is not None and _failed_reason(status) == "InvalidSpec"
    if status.get("phase") in TERMINAL and not restart:
        return Outcome()
    if restart:  # the spec was fixed after it failed validation: start from the beginning
        status = {}
    if parsed is None:
        failed = _invalid(body, errors, now)
        _write_status(kube, body, c.JOB_KIND, failed)
        return Outcome(failed, _events(status.get("conditions") or [], failed["conditions"]))
    job, refused = _effective_job(kube, body, parsed)
    ns, attempt = job.metadata.namespace, int(status.get("restarts") or 0)
    obs = Observed(
        labeling_required=job.spec.labeling is not None, suspended=job.spec.run_policy.suspend,
        labeling=_batch_job(kube, ns, jb.labeling_job_name(job)) if job.spec.labeling else None,
        rewards=_reward_states(kube, job),
        trainer=_batch_job(kube, ns, jb.trainer_job_name(job, attempt)),
        nodes=job.spec.trainer.nodes)
    p = plan(status, obs, _limits(job, cfg), now)

    if p.labeling or p.rewards or p.trainer:
        _sync_config(kube, body, job)
    if p.labeling:
        kube.ensure(owned(jb.build_labeling_job(job), body))  # type: ignore[arg-type]
    if p.rewards:
        _sync_rewards(kube, body, job)
    if p.trainer:
        _sync_trainer(kube, body, job, p, attempt, status, now)
    if p.stop_trainer and obs.trainer is not None and not obs.trainer.failed:
        kube.delete("batch/v1", "Job", ns, jb.trainer_job_name(job, attempt))

    conds = p.conditions
    if refused:
        conds = conditions.set_condition(conds, c.COND_READY, False, "ImmutableFieldChanged",
                                         "; ".join(refused), now)
    new: dict[str, Any] = {
        "phase": p.phase, "conditions": conds, "restarts": p.restarts,
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
        new.update(_scrape(kube, job, p.restarts))
        if ckpt := new.get("lastCheckpoint"):
            prev = status.get("lastCheckpoint") or {}
            same = prev.get("step") == ckpt["step"]
            ckpt["time"] = prev.get("time") if same else conditions.now_iso(now)
    _write_status(kube, body, c.JOB_KIND, new)
    events = _events(status.get("conditions") or [], conds)
    if p.restarts != attempt:
        events.append(("Warning", "GangRestart", f"trainer gang restarted: restart "
                       f"{p.restarts} of backoffLimit {job.spec.run_policy.backoff_limit}"))
    return Outcome(new, events)


def expired(body: Manifest, now: datetime) -> bool:
    """A finished job whose ttlSecondsAfterFinished has passed (the operator deletes it)."""
    ttl = ((body.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    done = conditions.parse_time((body.get("status") or {}).get("completionTime"))
    phase = (body.get("status") or {}).get("phase")
    return ttl is not None and done is not None and phase in TERMINAL and \
        (now - done).total_seconds() >= ttl


# --------------------------------------------------------------------------- RewardServer


def _template_drift(existing: Manifest, built: Manifest) -> bool:
    """Whether what we set differs (the API server adds defaults we must not fight)."""
    have, want = existing.get("spec") or {}, built["spec"]
    if have.get("replicas") != want["replicas"]:
        return True
    have_box = ((have.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    want_box = want["template"]["spec"]["containers"][0]
    return any(have_box[0].get(k) != want_box[k] for k in ("image", "args", "resources"))


def reconcile_server(kube: Session, body: Manifest, now: datetime) -> Outcome:
    """Bring one RewardServer's Deployment, Service, PDB and status up to date."""
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
    ns, name = server.metadata.namespace, server.metadata.name
    if (labels_cm := sb.build_label_config(server)) is not None:
        kube.ensure(owned(labels_cm, body))
    built = owned(sb.build_deployment(server), body)
    deployment = kube.ensure(built)
    if _template_drift(deployment, built):
        deployment = kube.patch("apps/v1", "Deployment", ns, name,
                                {"spec": built["spec"]}) or deployment
    kube.ensure(owned(sb.build_service(server), body))
    pdb = sb.build_pdb(server)
    if pdb is not None:
        kube.ensure(owned(pdb, body))
    elif kube.get("policy/v1", "PodDisruptionBudget", ns, name) is not None:
        kube.delete("policy/v1", "PodDisruptionBudget", ns, name)
    pods = kube.list("v1", "Pod", ns, sb.server_selector(server))
    new = server_status(server, deployment, pods, old, now)
    if (generation := body["metadata"].get("generation")) is not None:
        new["observedGeneration"] = generation
    _write_status(kube, body, c.SERVER_KIND, new)
    return Outcome(new, _events(old.get("conditions") or [], new["conditions"]))
