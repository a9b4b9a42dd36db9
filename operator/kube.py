"""The one place the operator talks to the Kubernetes API (besides kopf itself).

Creates are idempotent (an existing object is returned, never duplicated), so a restarted or
second operator replica converges on the same children. Label selectors are also applied
here on the client side, so results are right even from servers that ignore them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import kubernetes
import urllib3

from rlaif import __version__
from rlaif import constants as c
from rlaif.operator.telemetry import API_CALLS

if TYPE_CHECKING:
    from rlaif.operator.informer import Cache

LOG = logging.getLogger(__name__)
Manifest = dict[str, Any]
Manifests = list[Manifest]
USER_AGENT = f"rlaif-operator/{__version__}"
REQUEST_TIMEOUT = urllib3.Timeout(total=30)
AUTH_SECONDS = 60.0
"""How long request credentials are reused before the configuration is asked again."""

PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("scheduling.volcano.sh/v1beta1", "PodGroup"): "podgroups",
    ("scheduling.x-k8s.io/v1alpha1", "PodGroup"): "podgroups",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    (c.API_VERSION, c.JOB_KIND): c.JOB_PLURAL,
    (c.API_VERSION, c.SERVER_KIND): c.SERVER_PLURAL,
}


class ApiError(RuntimeError):
    """An API call that failed; ``status`` is the HTTP status, ``reason`` the Status object's
    reason (Forbidden, Invalid, ...), ``detail`` its message and ``fields`` the fields its
    causes name (a 422 says which field the API server refused)."""

    def __init__(self, status: int, method: str, path: str, body: str):
        self.status, self.method, self.path = status, method, path
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        parsed = parsed if isinstance(parsed, dict) else {}
        self.reason: str = parsed.get("reason") or ""
        self.detail: str = parsed.get("message") or body
        causes = (parsed.get("details") or {}).get("causes") or []
        self.fields = [str(cause["field"]) for cause in causes
                       if isinstance(cause, dict) and cause.get("field")]
        super().__init__(f"{method} {path}: HTTP {status}: {self.detail}")


class OwnershipConflict(RuntimeError):
    """An object the operator would create, change or delete exists but is not controlled by
    the resource reconciled: it is never adopted (a user who may only create RLAIFJobs must
    not be able to make the operator change objects they cannot touch)."""

    def __init__(self, obj: Manifest, owner_kind: str, owner_uid: str):
        meta = obj.get("metadata") or {}
        ref = controller_of(obj)
        held = f"controlled by {ref['kind']} {ref['name']}" if ref else "not controlled by it"
        self.object = f"{obj.get('kind', 'object')} {meta.get('namespace')}/{meta.get('name')}"
        super().__init__(f"{self.object} exists and is {held} (this {owner_kind} has uid "
                         f"{owner_uid}); delete or rename it to let the operator create its own")


def controller_of(obj: Manifest) -> Manifest | None:
    """The controller ownerReference of ``obj``, if any."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def check_owner(obj: Manifest | None, owner_kind: str, owner_uid: str) -> Manifest | None:
    """``obj`` when it is missing or controlled by ``owner_uid``; OwnershipConflict if not."""
    if obj is not None and (controller_of(obj) or {}).get("uid") != owner_uid:
        raise OwnershipConflict(obj, owner_kind, owner_uid)
    return obj


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = f"/namespaces/{quote(namespace)}" if namespace else ""
    return f"{root}{ns}/{plural}" + (f"/{quote(name)}" if name else "")


def matches(obj: Manifest, labels: dict[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


class Kube:
    """A thin JSON client on the official client's connection pool (TLS, client certificates,
    proxy) and credentials. Requests go straight to the pool: the official client's
    per-request body sanitising, parameter building and credential refresh were about a
    fifth of the operator's CPU while it created children (py-spy, 100 jobs)."""

    def __init__(self, api: kubernetes.client.ApiClient):
        self.api = api
        self.requests = 0
        self._auth: dict[str, str] = {}
        self._auth_at = -AUTH_SECONDS
        self._auth_lock = threading.Lock()

    def _headers(self, content_type: str | None, refresh: bool = False) -> dict[str, str]:
        """Request headers with the credentials, re-read every AUTH_SECONDS (the credential
        hooks of in-cluster and exec-plugin configs renew an expiring token there)."""
        with self._auth_lock:
            if refresh or time.monotonic() - self._auth_at >= AUTH_SECONDS:
                settings = self.api.configuration.auth_settings().values()
                self._auth = {s["key"]: s["value"] for s in settings
                              if s["in"] == "header" and s["value"]}
                self._auth_at = time.monotonic()
            auth = self._auth
        headers = {"Accept": "application/json", "User-Agent": self.api.user_agent, **auth}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _send(self, method: str, url: str, body: bytes | None, content_type: str | None,
              timeout: urllib3.Timeout, stream: bool = False) -> urllib3.BaseHTTPResponse:
        """One HTTP exchange; a 401 is tried once more with freshly read credentials."""
        def send(refresh: bool) -> urllib3.BaseHTTPResponse:
            return self.api.rest_client.pool_manager.request(
                method, self.api.configuration.host + url, body=body,
                headers=self._headers(content_type, refresh), timeout=timeout,
                preload_content=not stream)

        resp = send(refresh=False)
        if resp.status == 401:
            resp.release_conn()
            resp = send(refresh=True)
        return resp

    def request(self, method: str, url: str, body: Any = None,
                content_type: str = "application/json") -> Manifest | None:
        """One call; None on 404; ApiError on any other failure."""
        self.requests += 1
        API_CALLS.inc()
        data = json.dumps(body).encode() if body is not None else None
        resp = self._send(method, url, data, content_type if data is not None else None,
                          REQUEST_TIMEOUT)
        raw = resp.data
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise ApiError(resp.status, method, url, raw.decode(errors="replace"))
        return json.loads(raw) if raw else {}

    def stream(self, url: str, timeout: float) -> Iterator[Manifest]:
        """The events of one watch (``url`` has ``watch=true``), until the server ends it."""
        self.requests += 1
        API_CALLS.inc()
        resp = self._send("GET", url, None, None, urllib3.Timeout(connect=10, read=timeout),
                          stream=True)
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, "GET", url, resp.read().decode(errors="replace"))
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.release_conn()

    def get(self, api_version: str, kind: str, namespace: str | None, name: str
            ) -> Manifest | None:
        return self.request("GET", path(api_version, kind, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None,
             labels: dict[str, str]) -> list[Manifest]:
        query = urlencode({"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())})
        found = self.request("GET", f"{path(api_version, kind, namespace)}?{query}") or {}
        return [o for o in found.get("items") or [] if matches(o, labels)]

    def events_for(self, namespace: str | None, name: str) -> Manifests:
        """The Events about the object called ``name`` (core/v1 Events)."""
        query = urlencode({"fieldSelector": f"involvedObject.name={name}"})
        found = self.request("GET", f"{path('v1', 'Event', namespace)}?{query}") or {}
        return [e for e in found.get("items") or []
                if (e.get("involvedObject") or {}).get("name") == name]

    def post_event(self, about: Manifest, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``about`` (what ``kubectl describe`` shows). Best effort: a
        refused Event is logged, never a reason to fail the reconciliation that reports it."""
        meta = about["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace")},
            "involvedObject": {"apiVersion": about["apiVersion"], "kind": about["kind"],
                               "name": meta["name"], "namespace": meta.get("namespace"),
                               "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": c.PART_OF}, "reportingComponent": c.PART_OF,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.request("POST", path("v1", "Event", meta.get("namespace")), event)
        except ApiError as exc:
            LOG.warning("could not post the %s Event about %s/%s: %s", reason,
                        meta.get("namespace"), meta["name"], exc)

    def create(self, body: Manifest) -> Manifest:
        """Create ``body``; if another writer created it first, the stored object."""
        meta = body["metadata"]
        url = path(body["apiVersion"], body["kind"], meta.get("namespace"))
        try:
            return self.request("POST", url, body) or body
        except ApiError as exc:
            if exc.status != 409:
                raise
        existing = self.get(body["apiVersion"], body["kind"], meta.get("namespace"), meta["name"])
        return existing if existing is not None else body

    def ensure(self, body: Manifest) -> Manifest:
        """The stored object named like ``body``, created from it when missing."""
        meta = body["metadata"]
        existing = self.get(body["apiVersion"], body["kind"], meta.get("namespace"), meta["name"])
        return existing if existing is not None else self.create(body)

    def session(self, cache: Cache | None = None) -> Session:
        return Session(self, cache)

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
              patch: Manifest, subresource: str = "") -> Manifest | None:
        url = path(api_version, kind, namespace, name) + (f"/{subresource}" if subresource else "")
        return self.request("PATCH", url, patch, "application/merge-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """Delete with its pods (background propagation); already gone is fine."""
        self.request("DELETE", path(api_version, kind, namespace, name),
                     {"propagationPolicy": "Background"})


class Session:
    """One reconciliation's view of the API: kinds the informer cache holds are read from
    memory, others at most once per session; what this session writes is what it reads back
    (and goes into the cache, so the next reconciliation sees it before the watch does)."""

    def __init__(self, kube: Kube, cache: Cache | None = None):
        self.kube, self.store = kube, cache
        self.cache: dict[str, Manifest | None] = {}
        self.created = 0
        """Objects this session created."""

    def get(self, api_version: str, kind: str, namespace: str | None, name: str
            ) -> Manifest | None:
        key = path(api_version, kind, namespace, name)
        if key not in self.cache:
            informer = self.store.of(api_version, kind) if self.store else None
            self.cache[key] = informer.get(namespace, name) if informer is not None \
                else self.kube.get(api_version, kind, namespace, name)
        return self.cache[key]

    def list(self, api_version: str, kind: str, namespace: str | None,
             labels: dict[str, str], fresh: bool = False) -> list[Manifest]:
        """From the cache, or with ``fresh`` from the API: for a decision that must not rest
        on a watch that lags another (watches of different kinds are not ordered)."""
        informer = self.store.of(api_version, kind) if self.store and not fresh else None
        if informer is not None:
            return informer.select(namespace, labels)
        return self.kube.list(api_version, kind, namespace, labels)

    def events_for(self, namespace: str | None, name: str) -> Manifests:
        informer = self.store.of("v1", "Event") if self.store else None
        if informer is None:
            return self.kube.events_for(namespace, name)
        return [e for e in informer.select(namespace, {})
                if (e.get("involvedObject") or {}).get("name") == name]

    def _remember(self, obj: Manifest | None, api_version: str, kind: str,
                  namespace: str | None, name: str) -> None:
        self.cache[path(api_version, kind, namespace, name)] = obj
        informer = self.store.informers.get((api_version, kind)) if self.store else None
        if informer is not None:
            if obj is None:
                informer.remove(namespace, name)
            else:
                informer.put(obj)

    def get_owned(self, api_version: str, kind: str, namespace: str | None, name: str,
                  owner: Manifest) -> Manifest | None:
        """The object if ``owner`` controls it, None if missing, else OwnershipConflict."""
        return check_owner(self.get(api_version, kind, namespace, name), owner["kind"],
                           owner["metadata"]["uid"])

    def ensure(self, body: Manifest) -> Manifest:
        """The stored object, created when missing; with a controller ownerReference in
        ``body``, OwnershipConflict when the stored one has another controller (or none)."""
        meta = body["metadata"]
        existing = self.get(body["apiVersion"], body["kind"], meta.get("namespace"), meta["name"])
        if existing is None:  # (a create that lost a race returns the winner's object)
            existing = self.kube.create(body)
            self.created += 1
            self._remember(existing, body["apiVersion"], body["kind"], meta.get("namespace"),
                           meta["name"])
        if (ref := controller_of(body)) is not None:
            check_owner(existing, ref["kind"], ref["uid"])
        return existing

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
              patch: Manifest, subresource: str = "") -> Manifest | None:
        result = self.kube.patch(api_version, kind, namespace, name, patch, subresource)
        if subresource in ("", "status"):  # the whole object (a scale patch returns a Scale)
            self._remember(result, api_version, kind, namespace, name)
        return result

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self.kube.delete(api_version, kind, namespace, name)
        self._remember(None, api_version, kind, namespace, name)


_lock = threading.Lock()
_client: Kube | None = None


def client() -> Kube:
    """The process-wide client: in-cluster credentials, else the kubeconfig."""
    global _client
    with _lock:
        if _client is None:
            config = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=config)
            config.connection_pool_maxsize = 32  # one per handler thread, with room to spare
            api = kubernetes.client.ApiClient(config)
            api.user_agent = USER_AGENT
            _client = Kube(api)
        return _client
