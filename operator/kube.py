"""The one place the operator talks to the Kubernetes API (besides kopf itself).

Creates are idempotent (an existing object is returned, never duplicated), so a restarted or
second operator replica converges on the same children. Label selectors are also applied
here on the client side, so results are right even from servers that ignore them.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes

from rlaif import __version__
from rlaif import constants as c
from rlaif.operator.telemetry import API_CALLS

Manifest = dict[str, Any]
Manifests = list[Manifest]
USER_AGENT = f"rlaif-operator/{__version__}"

PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("scheduling.volcano.sh/v1beta1", "PodGroup"): "podgroups",
    ("scheduling.x-k8s.io/v1alpha1", "PodGroup"): "podgroups",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    (c.API_VERSION, c.JOB_KIND): c.JOB_PLURAL,
    (c.API_VERSION, c.SERVER_KIND): c.SERVER_PLURAL,
}


class ApiError(RuntimeError):
    """An API call that failed; ``status`` is the HTTP status."""

    def __init__(self, status: int, method: str, path: str, body: str):
        self.status = status
        try:
            detail = json.loads(body).get("message") or body
        except (ValueError, AttributeError):
            detail = body
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")


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
    """A thin JSON client over the official client's connection handling (auth, TLS)."""

    def __init__(self, api: kubernetes.client.ApiClient):
        self.api = api
        self.requests = 0

    def request(self, method: str, url: str, body: Any = None,
                content_type: str = "application/json") -> Manifest | None:
        """One call; None on 404; ApiError on any other failure."""
        self.requests += 1
        API_CALLS.inc()
        _, full, headers, data, _ = self.api.param_serialize(
            method, url, header_params={"Accept": "application/json",
                                        "Content-Type": content_type},
            body=body, auth_settings=["BearerToken"])
        resp = self.api.call_api(method, full, header_params=headers, body=data,
                                 _request_timeout=30)
        raw = resp.read()
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise ApiError(resp.status, method, url, raw.decode(errors="replace"))
        return json.loads(raw) if raw else {}

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

    def session(self) -> Session:
        return Session(self)

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
              patch: Manifest, subresource: str = "") -> Manifest | None:
        url = path(api_version, kind, namespace, name) + (f"/{subresource}" if subresource else "")
        return self.request("PATCH", url, patch, "application/merge-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """Delete with its pods (background propagation); already gone is fine."""
        self.request("DELETE", path(api_version, kind, namespace, name),
                     {"propagationPolicy": "Background"})


class Session:
    """One reconciliation's view of the API: each object is read at most once, and what this
    session writes is what it reads back (the steady state costs one GET per child)."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self.cache: dict[str, Manifest | None] = {}

    def get(self, api_version: str, kind: str, namespace: str | None, name: str
            ) -> Manifest | None:
        key = path(api_version, kind, namespace, name)
        if key not in self.cache:
            self.cache[key] = self.kube.get(api_version, kind, namespace, name)
        return self.cache[key]

    def list(self, api_version: str, kind: str, namespace: str | None,
             labels: dict[str, str]) -> list[Manifest]:
        return self.kube.list(api_version, kind, namespace, labels)

    def events_for(self, namespace: str | None, name: str) -> Manifests:
        return self.kube.events_for(namespace, name)

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
            self.cache[path(body["apiVersion"], body["kind"], meta.get("namespace"),
                            meta["name"])] = existing
        if (ref := controller_of(body)) is not None:
            check_owner(existing, ref["kind"], ref["uid"])
        return existing

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
              patch: Manifest, subresource: str = "") -> Manifest | None:
        result = self.kube.patch(api_version, kind, namespace, name, patch, subresource)
        if not subresource:
            self.cache[path(api_version, kind, namespace, name)] = result
        return result

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self.kube.delete(api_version, kind, namespace, name)
        self.cache[path(api_version, kind, namespace, name)] = None


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
