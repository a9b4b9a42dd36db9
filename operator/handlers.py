"""kopf hosts the process (start-up, clean-up, liveness, the admission webhook); the
reconciling is informer-driven: one list+watch per kind with a server-side label selector
(``informer.Cache``) feeds a work queue, and each reconciliation reads its object and
children from that cache.

What wakes a reconciliation: a change to a job's or server's spec or metadata, a change to
one of its children (the controller ownerReference names the parent), a pod of it or a
FailedCreate Event about its trainer Job; a requeue every ``reconcileInterval`` while a job is
not finished (timeouts, metrics); a full resync every ``resyncInterval``. Of the objects
due, the oldest job's run first (``_rank``). There are no
timers, so there are no finalizers: children carry ownerReferences and Kubernetes' garbage
collector deletes them with their parent, and deletes go through while the operator is down
(a finalizer an older version left behind is taken off).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kopf
import prometheus_client

from rlaif import constants as c
from rlaif.operator import admission, events, kube, leader, reconcile, telemetry
from rlaif.operator import server_builders as sb
from rlaif.operator.informer import Cache, Informer, QueueKey, WorkQueue
from rlaif.operator.kube import Manifest, controller_of
from rlaif.operator.settings import OperatorConfig

CFG = OperatorConfig.from_env()
OWNED = {c.LABEL_MANAGED_BY: c.PART_OF}
"""Children this operator created: the server-side selector of every child watch."""
CHILD_KINDS = [("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment"),
               ("batch/v1", "Job"), ("networking.k8s.io/v1", "NetworkPolicy"),
               ("policy/v1", "PodDisruptionBudget"), reconcile.HPA]
FAILED_CREATE = {"reason": "FailedCreate", "involvedObject.kind": "Job"}
"""The only Events read (why a trainer Job has no pods: quota, admission)."""
RETRY_SECONDS = max(1.0, CFG.reconcile_interval)
"""A failed reconciliation (API error) is retried this soon."""
WORKERS = 8
COALESCE_SECONDS = 0.05
"""How long a parent waits after a child's change before its visit (see _enqueue_owner)."""
SYNC_SECONDS = 60.0
"""How long the workers wait for every informer's first list before reconciling anyway."""
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
"""Put on every object by the timers of versions before 0.2; taken off here."""

CACHE: Cache | None = None
RECORDER: events.Recorder | None = None
ELECTOR: leader.Elector | None = None
"""This replica's leader election, started with the operator when enabled."""
_stop = threading.Event()
_scraped: dict[QueueKey, float] = {}
"""When each running job's rank 0 was last scraped (once per reconcileInterval)."""
_deferred: set[QueueKey] = set()
"""Objects whose last pass deferred its status (reconcile._report): the next one writes."""
DEFERRED_SECONDS = 1.0
"""A deferred pass comes back this soon if no child's watch event brings it back sooner."""


def watch_namespaces(argv: list[str]) -> list[str] | None:
    """The namespaces kopf was told to serve (``--namespace``/``-n``), None for all."""
    found, args = [], iter(argv)
    for arg in args:
        if arg in ("-n", "--namespace"):
            found.append(next(args, ""))
        elif arg.startswith("--namespace="):
            found.append(arg.split("=", 1)[1])
    return [n for n in found if n] or None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 16
    if CFG.metrics_port:
        prometheus_client.start_http_server(CFG.metrics_port)
    # Serve only: the chart owns the ValidatingWebhookConfiguration (no kopf-managed one).
    if CFG.webhook_port:
        settings.admission.server = webhook_server(CFG)
    settings.scanning.disabled = not CFG.cluster_scanning
    if CFG.leader_election:
        global ELECTOR
        ELECTOR = leader.Elector(kube.client(), CFG.lease_namespace, CFG.lease_name,
                                 f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
                                 CFG.lease_seconds)
        threading.Thread(target=ELECTOR.run, args=(_stop,), name="leader-election",
                         daemon=True).start()
    global CACHE, RECORDER
    CACHE = build_cache(kube.client(), watch_namespaces(sys.argv))
    CACHE.start(_stop)
    RECORDER = events.Recorder(kube.client(), QUEUE.idle_for)
    RECORDER.start(_stop)
    for i in range(WORKERS):
        threading.Thread(target=_work, args=(CACHE,), name=f"reconcile-{i}",
                         daemon=True).start()
    threading.Thread(target=_resync, name="resync", daemon=True).start()


@kopf.on.cleanup()
def stop_leading(**_: Any) -> None:
    _stop.set()
    if ELECTOR is not None:
        ELECTOR.release()
    if RECORDER is not None:  # the Events still waiting
        RECORDER.join()


def webhook_server(cfg: OperatorConfig) -> kopf.WebhookServer:
    """HTTPS with the mounted certificate (cert-manager's tls.crt/tls.key/ca.crt layout)."""
    certs = Path(cfg.webhook_cert_dir)
    ca = certs / "ca.crt" if (certs / "ca.crt").exists() else certs / "tls.crt"
    return kopf.WebhookServer(addr="0.0.0.0", port=cfg.webhook_port,
                              certfile=str(certs / "tls.crt"), pkeyfile=str(certs / "tls.key"),
                              cafile=str(ca))


def build_cache(client: kube.Kube, namespaces: list[str] | None) -> Cache:
    """Informers for both kinds (all of them) and every child kind (only the operator's)."""
    def inf(api_version: str, kind: str, on_change: Any, **selectors: Any) -> Informer:
        return Informer(client, api_version, kind, on_change=on_change,
                        namespaces=namespaces, **selectors)

    return Cache([inf(c.API_VERSION, c.JOB_KIND, _job_changed),
                  inf(c.API_VERSION, c.SERVER_KIND, _server_changed),
                  *(inf(av, kind, _child_changed, labels=OWNED) for av, kind in CHILD_KINDS),
                  inf("v1", "Pod", _pod_changed, labels=OWNED),
                  inf("v1", "Event", _event_changed, fields=FAILED_CREATE)])


def _rank(key: QueueKey) -> float:
    """Oldest job first: a job-owned server ranks as its job, by when each was first seen
    (a shared server by its own arrival)."""
    kind, namespace, name = key
    if CACHE is None:
        return 0.0
    if kind == c.SERVER_KIND:
        server = CACHE.informers[(c.API_VERSION, kind)].get(namespace, name)
        ref = controller_of(server) if server is not None else None
        if ref is not None and ref.get("kind") == c.JOB_KIND:
            kind, name = c.JOB_KIND, ref["name"]
    arrived = CACHE.informers[(c.API_VERSION, kind)].arrival(namespace, name)
    return arrived if arrived is not None else time.monotonic()


QUEUE = WorkQueue(_rank)


def _desired(obj: Manifest | None) -> Manifest | None:
    """An object without its status and bookkeeping: what a change to it that needs a
    reconciliation changes (our own status writes come back as watch events too)."""
    if obj is None:
        return None
    meta = {k: v for k, v in obj["metadata"].items()
            if k not in ("resourceVersion", "managedFields")}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


_current = threading.local()
"""The key the calling worker thread is reconciling, if any."""


def _wake(key: QueueKey, delay: float = 0.0) -> None:
    """Queue ``key`` for a change, unless the change is its own reconciliation's write (which
    reaches the cache, and so these handlers, from the worker thread that made it)."""
    if key != getattr(_current, "key", None):
        QUEUE.add(key, delay)


def _enqueue_owner(obj: Manifest) -> None:
    """Wake the parent of a changed child, COALESCE_SECONDS later: its children change in
    bursts (three servers turning ready), and one visit then sees them all."""
    ref = controller_of(obj)
    if ref is not None and ref.get("apiVersion") == c.API_VERSION:
        _wake((ref["kind"], obj["metadata"].get("namespace"), ref["name"]), COALESCE_SECONDS)


def _job_changed(old: Manifest | None, new: Manifest | None) -> None:
    if new is not None and _desired(old) != _desired(new):
        _wake((c.JOB_KIND, new["metadata"].get("namespace"), new["metadata"]["name"]))


def _server_changed(old: Manifest | None, new: Manifest | None) -> None:
    if new is not None and _desired(old) != _desired(new):
        _wake((c.SERVER_KIND, new["metadata"].get("namespace"), new["metadata"]["name"]))
    _enqueue_owner(new or old or {"metadata": {}})  # a job waiting for this server


def _child_changed(old: Manifest | None, new: Manifest | None) -> None:
    _enqueue_owner(new or old or {"metadata": {}})


def _pod_changed(old: Manifest | None, new: Manifest | None) -> None:
    """A reward pod wakes its server, a trainer or labelling pod its job."""
    pod = new or old or {"metadata": {}}
    labels, ns = pod["metadata"].get("labels") or {}, pod["metadata"].get("namespace")
    if labels.get(c.LABEL_COMPONENT) == sb.COMPONENT and c.LABEL_INSTANCE in labels:
        _wake((c.SERVER_KIND, ns, labels[c.LABEL_INSTANCE]))
    elif c.LABEL_JOB in labels:
        _wake((c.JOB_KIND, ns, labels[c.LABEL_JOB]))


def _event_changed(old: Manifest | None, new: Manifest | None) -> None:
    """A FailedCreate about a trainer Job wakes the job that owns it."""
    event = new or old or {}
    involved = event.get("involvedObject") or {}
    jobs = CACHE.of("batch/v1", "Job") if CACHE is not None else None
    found = jobs.get(involved.get("namespace"), involved.get("name", "")) if jobs else None
    if found is not None:
        _enqueue_owner(found)


def _enqueue_all() -> None:
    if CACHE is None:
        return
    for kind in (c.JOB_KIND, c.SERVER_KIND):
        informer = CACHE.informers[(c.API_VERSION, kind)]
        for obj in informer.items():
            QUEUE.add((kind, obj["metadata"].get("namespace"), obj["metadata"]["name"]))


def _leading() -> bool:
    return not CFG.leader_election or (ELECTOR is not None and ELECTOR.leading.is_set())


def _resync() -> None:
    """Everything again every resyncInterval, and at once when this replica becomes leader
    (a standby's queue was dropped while it waited)."""
    was_leading, last = False, time.monotonic()
    while not _stop.wait(1.0):
        leading = _leading()
        if (leading and not was_leading) or time.monotonic() - last >= CFG.resync_interval:
            _enqueue_all()
            last = time.monotonic()
        was_leading = leading


def _work(cache: Cache) -> None:
    """One reconcile worker. It starts once every informer has listed, so reconciliations
    read from memory from the first one (a kind that cannot be listed, e.g. an API the
    cluster lacks, is read from the API after SYNC_SECONDS instead of blocking everything)."""
    if not cache.wait_synced(SYNC_SECONDS):
        logging.getLogger(__name__).warning(
            "not every watch has listed after %.0f s; reconciling anyway", SYNC_SECONDS)
    QUEUE.work(_handle, _stop)


def _handle(key: QueueKey) -> None:
    """One queued reconciliation; it comes back when the outcome asks for it."""
    if not _leading():
        return
    kind = key[0]
    telemetry.RECONCILES.labels(kind).inc()
    _current.key = key
    try:
        with telemetry.SECONDS.labels(kind).time():
            again = _run(*key)
    except Exception:  # API errors and the like: logged, counted, tried again soon
        telemetry.FAILURES.labels(kind).inc()
        logging.getLogger(__name__).exception("reconciling %s %s/%s failed", *key)
        again = RETRY_SECONDS
    finally:
        _current.key = None
    if again is not None:
        QUEUE.add(key, again)


def _drop_kopf_finalizer(session: kube.Session, body: Manifest) -> None:
    finalizers = body["metadata"].get("finalizers") or []
    if KOPF_FINALIZER in finalizers:
        meta = body["metadata"]
        session.patch(body["apiVersion"], body["kind"], meta.get("namespace"), meta["name"], {
            "metadata": {"finalizers": [f for f in finalizers if f != KOPF_FINALIZER],
                         "resourceVersion": meta.get("resourceVersion")}})


def _post(session: kube.Session, about: Manifest, type_: str, reason: str,
          message: str) -> None:
    if RECORDER is not None:
        RECORDER.record(about, type_, reason, message)
    else:
        session.kube.post_event(about, type_, reason, message)


def _run(kind: str, namespace: str | None, name: str) -> float | None:
    """One reconciliation of one object; the seconds until it should run again, if ever."""
    session = kube.client().session(CACHE)
    fresh = session.get(c.API_VERSION, kind, namespace, name)
    if fresh is None or fresh["metadata"].get("deletionTimestamp"):
        _scraped.pop((kind, namespace, name), None)
        _deferred.discard((kind, namespace, name))
        if fresh is not None:
            _drop_kopf_finalizer(session, fresh)
        return None
    _drop_kopf_finalizer(session, fresh)
    now, key = datetime.now(timezone.utc), (kind, namespace, name)
    defer = key not in _deferred
    if kind == c.JOB_KIND:
        if reconcile.expired(fresh, now):
            session.delete(c.API_VERSION, kind, namespace, name)
            _post(session, fresh, "Normal", "Expired", "deleted after ttlSecondsAfterFinished")
            return None
        clock = time.monotonic()
        scrape = CFG.scrape_metrics and clock - _scraped.get(key, -1e9) >= \
            0.9 * CFG.reconcile_interval
        if scrape:
            _scraped[key] = clock
        outcome = reconcile.reconcile_job(session, fresh, CFG, now, scrape=scrape, defer=defer)
    else:
        outcome = reconcile.reconcile_server(session, fresh, now, defer=defer)
    if outcome.deferred:
        _deferred.add(key)
        return DEFERRED_SECONDS
    _deferred.discard(key)
    for type_, reason, message in outcome.events:
        _post(session, fresh, type_, reason, message)
    if outcome.retry:
        return RETRY_SECONDS
    return reconcile.next_visit(fresh, outcome, CFG.reconcile_interval, now) \
        if kind == c.JOB_KIND else None


def validate_job(body: kopf.Body, **kwargs: Any) -> None:
    """Refuse invalid specs and immutable-field changes at admission."""
    old = kwargs.get("old")
    errors = admission.admission_errors(dict(old) if old else None, dict(body))
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


# kopf refuses to start with admission handlers but no webhook server: register it only
# when the webhook is configured; otherwise the ImmutableFieldChanged condition is the check.
if CFG.webhook_port:
    kopf.on.validate(c.GROUP, c.VERSION, c.JOB_PLURAL, id=admission.WEBHOOK_ID,
                     operations=["CREATE", "UPDATE"])(validate_job)
