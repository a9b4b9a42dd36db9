"""A Kubernetes API on loopback for the operator's integration tests and benchmark.

kmock's KubernetesEmulator (by kopf's author) stores objects, serves list/watch/patch and
discovery. This module fills the gaps a real API server would not have (see
shared/reference/offline-assets.md): server-set metadata (uid, a rising resourceVersion,
creationTimestamp, generation), ``kind`` on lists, and declared resources with the verbs
kopf and kubectl need. It runs no controllers and no garbage collector: tests drive pod,
Job and Deployment status themselves (the benchmark lets it roll Deployments out at once).

The real operator runs as a subprocess (``rlaif operator``) and the real kubectl talks to the
same server, both through a kubeconfig written here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import aiohttp.web
import kmock
import kubernetes
import yaml

from rlaif import constants as c
from rlaif.api.crd import all_crds
from rlaif.operator.kube import USER_AGENT, Kube

REPO = Path(__file__).resolve().parent.parent
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
RESOURCES = {
    # (group/version/plural): (kind, subresources)
    "v1/namespaces": ("Namespace", []),  # kopf waits to see it in discovery
    "v1/pods": ("Pod", ["status"]),
    "v1/services": ("Service", ["status"]),
    "v1/configmaps": ("ConfigMap", []),
    "v1/secrets": ("Secret", []),
    "v1/events": ("Event", []),
    "batch/v1/jobs": ("Job", ["status"]),
    "apps/v1/deployments": ("Deployment", ["status", "scale"]),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", []),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", ["status"]),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", ["status"]),
    "coordination.k8s.io/v1/leases": ("Lease", []),
    "scheduling.volcano.sh/v1beta1/podgroups": ("PodGroup", []),
    "scheduling.x-k8s.io/v1alpha1/podgroups": ("PodGroup", []),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", []),
    "admissionregistration.k8s.io/v1/validatingwebhookconfigurations": (
        "ValidatingWebhookConfiguration", []),
    f"{c.API_VERSION}/{c.JOB_PLURAL}": (c.JOB_KIND, ["status"]),
    f"{c.API_VERSION}/{c.SERVER_PLURAL}": (c.SERVER_KIND, ["status", "scale"]),
}
RBAC_VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create",
              "UPDATE": "patch", "DELETE": "delete"}
"""kmock's actions as RBAC verbs (kmock maps PATCH to UPDATE and serves no PUT)."""
SHORT_NAMES = {c.JOB_KIND: [c.JOB_SHORT], c.SERVER_KIND: [c.SERVER_SHORT]}
CLUSTER_SCOPED = {"CustomResourceDefinition", "Namespace", "ValidatingWebhookConfiguration"}

T = TypeVar("T")
ObjectKey = tuple[Any, str | None, str]
"""kmock's key of a stored object: (resource, namespace, name)."""


class Call(NamedTuple):
    """One API request as RBAC authorises it ("" for no group, subresource, namespace or
    name; the namespace is "" for cluster-wide lists and watches)."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str


class Created(NamedTuple):
    """When an object was stored (time.monotonic() in this process) and its controller."""

    at: float
    owner: tuple[str, str] | None
    """(kind, name) of its controller ownerReference."""


DIRECT = {kmock.action.LIST: "_serve_list", kmock.action.FETCH: "_serve_fetch",
          kmock.action.CREATE: "_serve_create", kmock.action.UPDATE: "_serve_update",
          kmock.action.DELETE: "_serve_delete"}
"""The requests answered without kmock's reaction matching (watches stream through kmock)."""


class _DirectAnswers(kmock.RawHandler):  # type: ignore[misc]
    """Object requests go straight to the emulator's own handler for their action.

    kmock matches every request against each registered reaction's filters and renders the
    answer through its DSL: about half of the emulator's CPU, which made a single-threaded
    emulator, not the operator, the bottleneck of the scale benchmark. The emulator registers
    no reactions of its own, so kmock would pick the same handler (its fallback for the
    action); errors still reach kmock, which answers them as Kubernetes Status objects."""

    async def _handle(self, request: kmock.Request) -> Any:
        known = request.resource is not None and request.resource.plural
        serve = DIRECT.get(request.action) if known and request.action else None
        if serve is None:
            return await super()._handle(request)
        return aiohttp.web.json_response(await getattr(self, serve)(request))


class Emulator(kmock.KubernetesEmulator, _DirectAnswers):  # type: ignore[misc]
    """KubernetesEmulator plus the metadata a real API server sets."""

    served = 0
    """Requests served (kmock's own log is trimmed, see below)."""
    operator_requests = 0
    """Of which the operator (its client and kopf) made."""
    operator_calls: set[Call]
    """Every API call the operator made, as RBAC sees it (the RBAC replay tests)."""
    operator_verbs: collections.Counter[str]
    """The operator's requests by RBAC verb (the benchmark's breakdown at rest)."""
    operator_resources: collections.Counter[str]
    """The operator's requests by resource (plural)."""
    refusals: dict[tuple[str, str, str], kmock.KubernetesError]
    """(verb, plural, namespace) -> the error to answer instead: what a ResourceQuota, an
    admission webhook or a validation error would say (tests of error reporting)."""
    created: dict[tuple[str, str | None, str], Created]
    """Every object created, by (plural, namespace, name): the benchmark's latencies."""
    version = 0
    """The last resourceVersion given out."""
    _writes: asyncio.Lock
    instant_rollout = False
    """Act as the Deployment controller of a cluster whose pods start at once: right after a
    Deployment is created, its status says every replica is ready (a separate update and
    watch event, as from the real controller), so jobs go on to their trainer Jobs."""

    async def _handle(self, request: kmock.Request) -> Any:
        # kmock matches each request against views over its whole request log, which makes
        # every request slower than the last; keep only the current one (nothing here uses
        # the log's history).
        self.served += 1
        del self._requests[:-1]
        agent = request.headers.get("User-Agent", "")
        res = request.resource
        if (res is not None and res.plural and request.action is not None
                and agent.startswith((USER_AGENT, "kopf/"))):
            self.operator_requests += 1
            self.operator_calls.update(self._calls(request))
            self.operator_verbs[RBAC_VERBS[request.action.value]] += 1
            self.operator_resources[res.plural] += 1
        if (res is not None and request.action is not None and (refusal := self.refusals.get(
                (RBAC_VERBS[request.action.value], res.plural or "", request.namespace or "")))):
            raise refusal
        data = request.data if isinstance(request.data, dict) else None
        write = data is not None and request.action in (kmock.action.CREATE,
                                                        kmock.action.UPDATE)
        # One write at a time, so resourceVersions rise in the order the writes are stored.
        async with self._writes if write else contextlib.nullcontext():
            if data is not None and write:
                self._server_metadata(request, data)
            try:
                response = await super()._handle(request)
            finally:
                if (request.action == kmock.action.UPDATE and request.resource is not None
                        and request.name is not None):
                    # kmock keeps every version of every object; keep the latest only.
                    key = (request.resource, request.namespace, request.name)
                    if key in self.objects:
                        del self.objects[key].history[:-1]
        if data is not None and request.action == kmock.action.CREATE and res is not None:
            self._record_creation(res, data)
        return response

    def _server_metadata(self, request: kmock.Request, data: dict[str, Any]) -> None:
        """What the API server sets on a create or a (merge-)patch: name from generateName,
        uid, creationTimestamp, generation (bumped by a spec change) and a resourceVersion
        that rises with every write, as etcd's revision does."""
        meta = data.setdefault("metadata", {})
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        if request.action == kmock.action.CREATE:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp",
                            datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("generation", 1)
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
        elif ("spec" in data and request.subresource in (None, "scale")
              and request.resource is not None and request.name is not None):
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not (stored := self.objects[key]).deleted:
                meta["generation"] = (stored.get("metadata") or {}).get("generation", 1) + 1

    def _record_creation(self, resource: Any, data: dict[str, Any]) -> None:
        meta = data.get("metadata") or {}
        key: ObjectKey = (resource, meta.get("namespace"), str(meta.get("name")))
        if key not in self.objects or self.objects[key].deleted:
            return  # refused
        owner = next(((r.get("kind", ""), r.get("name", ""))
                      for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        self.created[(resource.plural, meta.get("namespace"), meta["name"])] = Created(
            time.monotonic(), owner)
        if self.instant_rollout and resource.plural == "deployments":
            asyncio.get_running_loop().create_task(self._roll_out(key))

    async def _roll_out(self, key: ObjectKey) -> None:
        """What the Deployment controller writes once every pod is ready."""
        async with self._writes, self._lock:
            if key not in self.objects or (obj := self.objects[key]).deleted:
                return
            replicas = (obj.get("spec") or {}).get("replicas", 1)
            self.version += 1
            obj.patch({"metadata": {"resourceVersion": str(self.version)}, "status": {
                "observedGeneration": (obj.get("metadata") or {}).get("generation", 1),
                "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas}})
            del obj.history[:-1]
            await self._buses[key[0]].put({"type": "MODIFIED", "object": obj.raw})

    def _calls(self, request: kmock.Request) -> list[Call]:
        """The request as RBAC authorises it, plus the ``update`` of an owner's finalizers that
        the OwnerReferencesPermissionEnforcement admission plugin checks for every
        ownerReference with blockOwnerDeletion (strict clusters such as OpenShift)."""
        res, action = request.resource, request.action
        assert res is not None and action is not None
        calls = [Call(RBAC_VERBS[action.value], res.group or "", res.plural or "",
                      request.subresource or "", request.namespace or "", request.name or "")]
        data = request.data if isinstance(request.data, dict) else {}
        for ref in (data.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("blockOwnerDeletion") and action in (kmock.action.CREATE,
                                                           kmock.action.UPDATE):
                group = ref["apiVersion"].rpartition("/")[0]
                owner = next(r for r in self.resources if self.resources[r].kind == ref["kind"]
                             and (r.group or "") == group)
                calls.append(Call("update", owner.group or "", owner.plural or "", "finalizers",
                                  request.namespace or "", ref["name"]))
        return calls

    # kmock finds the object of a fetch, create, update or delete by scanning every stored
    # object, which makes each request cost O(objects) (minutes at 1,000 jobs); these look it
    # up by its key instead, answering as kmock does. Nothing awaits between the lookup and
    # the answer, so kmock's lock is not needed.

    def _stored(self, request: kmock.Request, namespace: str | None, name: str | None) -> Any:
        if request.resource is None or name is None:
            raise kmock.KubernetesObjectNotFoundError()
        key: ObjectKey = (request.resource, namespace, name)
        if key not in self.objects:
            raise kmock.KubernetesObjectNotFoundError()
        return self.objects[key]

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        obj = self._stored(request, request.namespace, request.name)
        if obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return _table(request, [obj.raw]) or _scale_view(request, obj.raw)

    async def _serve_create(self, request: kmock.Request) -> Any:
        meta = (request.data or {}).get("metadata") or {}
        return self._stored(request, request.namespace or meta.get("namespace"),
                            request.name or meta.get("name")).raw

    async def _serve_update(self, request: kmock.Request) -> Any:
        obj = self._stored(request, request.namespace, request.name)
        return _scale_view(request, obj.last.raw)

    async def _serve_delete(self, request: kmock.Request) -> Any:
        return self._stored(request, request.namespace, request.name).last.raw

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """kmock's watch without its gap: kmock sends the stored objects and only then
        subscribes to changes, losing whatever was written while it sent them (a job created
        then was not seen until the watch was renewed, minutes later). Here the subscription
        is taken under the store's lock, with the snapshot."""
        yield b""  # the headers, at once
        assert request.resource is not None  # kmock watches known resources only (else 404)
        bus = self._buses[request.resource]
        async with self._lock:  # every write publishes its event under this lock
            mark = await bus.mark()
            events = [{"type": "ADDED", "object": obj.raw}
                      for key, obj in self.objects.items()
                      if self._watched(request, key[0], key[1], key[2]) and not obj.deleted
                      and selected(request, obj.raw)]
        try:
            for event in events:
                yield event
            async for event in bus.stream(since=mark):
                meta = (event.get("object") or {}).get("metadata") or {}
                if self._watched(request, request.resource, meta.get("namespace"),
                                 meta.get("name")) and selected(request, event.get("object")):
                    yield event
        finally:
            await bus.unmark(mark)

    @staticmethod
    def _watched(request: kmock.Request, resource: Any, namespace: str | None,
                 name: str | None) -> bool:
        return bool(resource == request.resource
                    and request.namespace in (None, namespace)
                    and request.name in (None, name))

    async def _serve_list(self, request: kmock.Request) -> Any:
        listed = await super()._serve_list(request)
        assert isinstance(listed, dict)  # kmock serves a list as a dict of its items
        assert request.resource is not None  # kmock lists known resources only (else 404)
        out = dict(listed)
        out["items"] = [o for o in out.get("items") or [] if selected(request, o)]
        info = self.resources[request.resource]
        group, version = request.resource.group, request.resource.version
        out["apiVersion"] = f"{group}/{version}" if group else version
        out["kind"] = f"{info.kind}List"
        return _table(request, out.get("items") or []) or out


def _scale_view(request: kmock.Request, obj: dict[str, Any]) -> dict[str, Any]:
    """The scale subresource as the API server derives it from a CRD's scale paths
    (``kubectl scale`` and HPAs read and write an autoscaling/v1 Scale)."""
    if request.subresource != "scale":
        return obj
    meta = obj.get("metadata") or {}
    return {"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion",
                                                  "creationTimestamp")},
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": (obj.get("status") or {}).get("selector", "")}}


PRINTER_COLUMNS = {crd["spec"]["names"]["plural"]: crd["spec"]["versions"][0].get(
    "additionalPrinterColumns", []) for crd in all_crds().values()}
JSON_PATH_STEP = re.compile(r'\.(\w+)|\[\?\(@\.(\w+)=="([^"]*)"\)\]')


_TERM = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*))?\s*$")


def selected(request: kmock.Request, obj: Any) -> bool:
    """Whether ``obj`` passes the request's labelSelector and fieldSelector, as the API
    server filters lists and watches (kmock ignores both): equality, inequality and
    existence terms. A selector with a term it cannot read (set-based: ``in``, ``notin``)
    selects everything, as kmock did."""
    if not isinstance(obj, dict):
        return True
    for param, value_of in (("labelSelector", _label), ("fieldSelector", _field)):
        selector = request.params.get(param) or ""
        terms = [_TERM.match(t) for t in re.split(r",(?![^(]*\))", selector) if t.strip()]
        for match in terms if all(terms) else []:
            assert match is not None
            negate, key, op, want = match.groups()
            have = value_of(obj, key)
            if op is None:
                ok = (have is None) == bool(negate)
            else:
                ok = (have == want) == (op != "!=") if have is not None else op == "!="
            if not ok:
                return False
    return True


def _label(obj: dict[str, Any], key: str) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(key)


def _field(obj: dict[str, Any], key: str) -> str | None:
    node: Any = obj
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else str(node)


def _table(request: kmock.Request, objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What an API server answers kubectl's ``Accept: ...;as=Table`` for a custom resource:
    the CRD's printer columns (``kubectl get -o wide`` shows those with priority 1 too);
    None for other requests, which get the objects themselves."""
    plural = request.resource.plural if request.resource is not None else None
    if "as=Table" not in request.headers.get("Accept", "") or plural not in PRINTER_COLUMNS:
        return None
    columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0},
               *({"priority": 0, **col} for col in PRINTER_COLUMNS[plural])]
    rows = [{"cells": [obj["metadata"]["name"], *(_cell(obj, col) for col in columns[1:])],
             "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"]}} for obj in objects]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
            "columnDefinitions": columns, "rows": rows}


def _cell(obj: dict[str, Any], column: dict[str, Any]) -> Any:
    """A printer column's value: the ``.field`` and ``[?(@.key=="value")]`` JSONPath steps
    the CRDs use; a date as the age kubectl shows."""
    node: Any = obj
    for field, key, value in JSON_PATH_STEP.findall(column["jsonPath"]):
        if field:
            node = node.get(field) if isinstance(node, dict) else None
        else:
            node = next((i for i in node or [] if isinstance(i, dict) and i.get(key) == value),
                        None)
    if node is not None and column["type"] == "date":
        age = datetime.now(timezone.utc) - datetime.fromisoformat(node.replace("Z", "+00:00"))
        return f"{int(age.total_seconds())}s"
    return node


def declare(emulator: Emulator) -> None:
    for key, (kind, subresources) in RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=kind not in CLUSTER_SCOPED, verbs=VERBS,
            subresources=subresources, shortnames=SHORT_NAMES.get(kind, []),
            categories=[c.CATEGORY] if kind in SHORT_NAMES else [])


class EmulatedCluster:
    """The emulator on a loopback port in a background thread, plus a kubeconfig for it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.url = ""
        self.emulator: Emulator | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            emulator.operator_calls = set()
            emulator.operator_verbs = collections.Counter()
            emulator.operator_resources = collections.Counter()
            emulator.refusals = {}
            emulator.created = {}
            emulator._writes = asyncio.Lock()
            declare(emulator)
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [{"name": "emulator", "context": {
                "cluster": "emulator", "user": "emulator", "namespace": "default"}}],
        }))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def count(self, plurals: set[str], namespace: str) -> int:
        """Objects of these resources in ``namespace``, counted in the emulator's own thread
        (no list requests: a benchmark's polling must not load the server it measures)."""
        async def _count() -> int:
            assert self.emulator is not None
            return sum(1 for (resource, ns, _), obj in list(self.emulator.objects.items())
                       if resource.plural in plurals and ns == namespace and not obj.deleted)
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(_count(), self._loop).result(30)

    @property
    def request_count(self) -> int:
        return self.emulator.served if self.emulator is not None else 0

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), **extra}

    def client(self, pool: int | None = None) -> Kube:
        """A client of the emulator; ``pool``: connections kept, for that many threads."""
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(self.kubeconfig),
                                           client_configuration=config)
        if pool is not None:
            config.connection_pool_maxsize = pool
        return Kube(kubernetes.client.ApiClient(config))

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The real kubectl against the emulator (no OpenAPI there, so --validate=false)."""
        kubectl = str(Path(sys.executable).parent / "kubectl")
        proc = subprocess.run([kubectl, *args], env=self.env(), capture_output=True, text=True,
                              input=stdin, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def start_operator(self, log: Path, interval: float = 0.5,
                       namespaces: list[str] | None = None, **env: str
                       ) -> subprocess.Popen[bytes]:
        """The real ``rlaif operator`` process, reconciling every ``interval`` seconds in
        ``namespaces`` (None: all); ``env`` adds RLAIF_* settings."""
        rlaif = str(Path(sys.executable).parent / "rlaif")
        full_env = self.env(**{"RLAIF_RECONCILE_INTERVAL": str(interval),
                               "RLAIF_START_TIMEOUT": "30", "RLAIF_RESTART_BACKOFF": "1",
                               "RLAIF_LEADER_ELECTION": "true", "RLAIF_LEASE_SECONDS": "3",
                               **env})
        with log.open("wb") as out:
            self.operator = subprocess.Popen(
                [rlaif, "operator", "--standalone",
                 *([f"--namespace={n}" for n in namespaces] if namespaces
                   else ["--all-namespaces"])], env=full_env,
                stdout=out, stderr=subprocess.STDOUT)
        return self.operator

    def stop_operator(self) -> None:
        """SIGTERM, as Kubernetes does; kopf finishes its handlers and exits."""
        if self.operator is not None:
            self.operator.terminate()
            self.operator.wait(30)
            self.operator = None


def wait_for(check: Callable[[], T | Literal[False] | None], timeout: float = 30.0,
             what: str = "condition", interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, and return that (a ``cond and value``
    check gives False until then); the error says what never happened."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (KeyError, IndexError, TypeError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f" (last error: {last!r})" if last else ""))
