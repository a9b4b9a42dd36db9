"""kopf handlers: thin. Each one fetches the object fresh, runs one reconciliation under a
per-object lock (watch events and timers can fire together) and posts the Events it reports.

Children carry ownerReferences, so Kubernetes' garbage collector deletes them with their
parent; there are no delete handlers. kopf adds its own finalizer for the timers and takes
it off when the object is deleted.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kopf
import prometheus_client

from rlaif import constants as c
from rlaif.operator import admission, kube, leader, reconcile, telemetry
from rlaif.operator.settings import OperatorConfig

CFG = OperatorConfig.from_env()
JOBS = (c.GROUP, c.VERSION, c.JOB_PLURAL)
SERVERS = (c.GROUP, c.VERSION, c.SERVER_PLURAL)
OWNED = {c.LABEL_MANAGED_BY: c.PART_OF}
"""Children this operator created (it watches their changes to react at once)."""
RETRY_SECONDS = max(1.0, CFG.reconcile_interval)
"""A failed reconciliation (API error) is retried this soon, not after kopf's 60 s."""

_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
ELECTOR: leader.Elector | None = None
"""This replica's leader election, started with the operator when enabled."""
_stop = threading.Event()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 16
    if CFG.metrics_port:
        prometheus_client.start_http_server(CFG.metrics_port)
    if CFG.webhook_port:
        settings.admission.server = webhook_server(CFG)
        settings.admission.managed = f"validate.{c.GROUP}"
    if CFG.leader_election:
        global ELECTOR
        ELECTOR = leader.Elector(kube.client(), CFG.lease_namespace, CFG.lease_name,
                                 f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
                                 CFG.lease_seconds)
        threading.Thread(target=ELECTOR.run, args=(_stop,), name="leader-election",
                         daemon=True).start()


@kopf.on.cleanup()
def stop_leading(**_: Any) -> None:
    _stop.set()
    if ELECTOR is not None:
        ELECTOR.release()


def webhook_server(cfg: OperatorConfig) -> kopf.WebhookServer:
    """HTTPS with the mounted certificate (cert-manager's tls.crt/tls.key/ca.crt layout)."""
    certs = Path(cfg.webhook_cert_dir)
    ca = certs / "ca.crt" if (certs / "ca.crt").exists() else certs / "tls.crt"
    return kopf.WebhookServer(addr="0.0.0.0", port=cfg.webhook_port,
                              host=cfg.webhook_host or None, certfile=str(certs / "tls.crt"),
                              pkeyfile=str(certs / "tls.key"), cafile=str(ca))


def _run(kind: str, namespace: str | None, name: str, uid: str, scrape: bool = False) -> None:
    """One reconciliation of one object, never two at once for the same object, and only
    in the replica holding the leader Lease."""
    if CFG.leader_election and (ELECTOR is None or not ELECTOR.leading.is_set()):
        return
    telemetry.RECONCILES.labels(kind).inc()
    with (_locks[uid], telemetry.SECONDS.labels(kind).time(),
          telemetry.FAILURES.labels(kind).count_exceptions()):
        session = kube.client().session()
        fresh = session.get(c.API_VERSION, kind, namespace, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        now = datetime.now(timezone.utc)
        if kind == c.JOB_KIND:
            if reconcile.expired(fresh, now):
                session.delete(c.API_VERSION, kind, namespace, name)
                # kopf posts events for raw dicts too; its stubs only name kopf.Body
                kopf.info(fresh, reason="Expired",  # type: ignore[arg-type]
                          message="deleted after ttlSecondsAfterFinished")
                return
            outcome = reconcile.reconcile_job(session, fresh, CFG, now, scrape=scrape)
        else:
            outcome = reconcile.reconcile_server(session, fresh, now)
    for type_, reason, message in outcome.events:
        # kopf posts events for raw dicts too; its stubs only name kopf.Body
        kopf.event(fresh, type=type_, reason=reason, message=message)  # type: ignore[arg-type]


def _run_body(kind: str, body: kopf.Body, scrape: bool = False) -> None:
    meta = body["metadata"]
    _run(kind, meta.get("namespace"), meta["name"], meta["uid"], scrape)


def _run_owner(body: kopf.Body) -> None:
    """A child changed (a Deployment became ready, a trainer Job failed): reconcile its owner
    now rather than at the next timer tick."""
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("apiVersion") == c.API_VERSION:
            _run(ref["kind"], body["metadata"].get("namespace"), ref["name"], ref["uid"])


def _spec_changed(body: kopf.Body) -> bool:
    """Whether the spec is newer than the status; our own status writes also arrive as watch
    events, and reconciling on those would only repeat the last reconciliation."""
    generation = body["metadata"].get("generation")
    return generation is None or (body.get("status") or {}).get("observedGeneration") != generation


@kopf.on.event(*JOBS)
def job_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    if type != "DELETED" and _spec_changed(body):
        _run_body(c.JOB_KIND, body)


@kopf.timer(*JOBS, interval=CFG.reconcile_interval, backoff=RETRY_SECONDS)
def job_timer(body: kopf.Body, **_: Any) -> None:
    _run_body(c.JOB_KIND, body, scrape=CFG.scrape_metrics)


@kopf.on.event(*SERVERS)
def server_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    if type == "DELETED":
        return
    if _spec_changed(body):
        _run_body(c.SERVER_KIND, body)
    _run_owner(body)  # a job waiting for this server's readiness


@kopf.timer(*SERVERS, interval=CFG.reconcile_interval, backoff=RETRY_SECONDS)
def server_timer(body: kopf.Body, **_: Any) -> None:
    _run_body(c.SERVER_KIND, body)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
def deployment_event(body: kopf.Body, **_: Any) -> None:
    _run_owner(body)


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
def batch_job_event(body: kopf.Body, **_: Any) -> None:
    _run_owner(body)


def validate_job(body: kopf.Body, **kwargs: Any) -> None:
    """Refuse invalid specs and immutable-field changes at admission."""
    old = kwargs.get("old")
    errors = admission.admission_errors(dict(old) if old else None, dict(body))
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


# kopf refuses to start with admission handlers but no webhook server: register it only
# when the webhook is configured; otherwise the ImmutableFieldChanged condition is the check.
if CFG.webhook_port:
    kopf.on.validate(*JOBS, operations=["CREATE", "UPDATE"])(validate_job)
