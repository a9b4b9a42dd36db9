"""Informer-style caches and the reconcile queue.

Each cached kind is listed once and then kept current by one watch with a server-side label
(or field) selector, so reconciliations read children from memory instead of GETting each
one on every pass, and a change to a child wakes its owner at once. The queue collapses
repeated wake-ups of one object into one reconciliation and never runs two of the same
object at a time (the informer, the resync and the per-job requeue may all ask together).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from rlaif.operator.kube import Kube, Manifest, matches, path

LOG = logging.getLogger(__name__)
WATCH_SECONDS = 300
"""The API server ends each watch after this long; it is then resumed (relisting first)."""
Key = tuple[str | None, str]
"""(namespace, name)."""
OnChange = Callable[[Manifest | None, Manifest | None], None]
"""(old, new): new is None when the object was deleted, old None when it is new."""


def key_of(obj: Manifest) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace"), meta["name"]


def _older(obj: Manifest, than: Manifest) -> bool:
    """Whether ``obj`` is an older version than ``than``. resourceVersions are opaque, but
    every API server in use issues increasing integers (etcd revisions): only those are
    compared, anything else counts as newer."""
    new = str(obj["metadata"].get("resourceVersion") or "")
    have = str((than.get("metadata") or {}).get("resourceVersion") or "")
    return have.isdigit() and new.isdigit() and int(new) < int(have)


def _labels(obj: Manifest | None) -> list[tuple[str, str]]:
    return list((((obj or {}).get("metadata") or {}).get("labels") or {}).items())


class Informer:
    """The objects of one kind matching ``labels`` (and ``fields``), kept current by list and
    watch. Stored objects are replaced, never mutated, so readers may hold them."""

    def __init__(self, kube: Kube, api_version: str, kind: str,
                 labels: dict[str, str] | None = None, fields: dict[str, str] | None = None,
                 on_change: OnChange | None = None, namespaces: list[str] | None = None):
        self.kube, self.api_version, self.kind = kube, api_version, kind
        self.labels, self.fields = dict(labels or {}), dict(fields or {})
        self.on_change = on_change
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        """One list and watch each (a namespaced Role allows no cluster-wide watch)."""
        self.synced = threading.Event()
        self._listed: set[str | None] = set()
        self._store: dict[Key, Manifest] = {}
        self._by_label: dict[tuple[str, str], set[Key]] = {}
        """The keys of the stored objects carrying each label: a select reads the objects of
        its rarest label, not every object of the kind (1,000 jobs' worth on every visit)."""
        self._arrived: dict[Key, float] = {}
        """When each stored object was first stored (time.monotonic())."""
        self._lock = threading.Lock()

    def _wanted(self, obj: Manifest) -> bool:
        """The selectors again on the client (a server may ignore them)."""
        if not matches(obj, self.labels):
            return False
        for field, value in self.fields.items():
            node: Any = obj
            for part in field.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node != value:
                return False
        return True

    def _query(self, namespace: str | None, **extra: str) -> str:
        params = dict(extra)
        if self.labels:
            params["labelSelector"] = ",".join(f"{k}={v}" for k, v in self.labels.items())
        if self.fields:
            params["fieldSelector"] = ",".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{path(self.api_version, self.kind, namespace)}?{urlencode(params)}"

    # ---------------------------------------------------------------- reads and writes

    def get(self, namespace: str | None, name: str) -> Manifest | None:
        with self._lock:
            return self._store.get((namespace, name))

    def select(self, namespace: str | None, labels: dict[str, str]) -> list[Manifest]:
        with self._lock:
            if labels:
                keys = min((self._by_label.get(item, set()) for item in labels.items()),
                           key=len)
                objs = [self._store[k] for k in keys]
            else:
                objs = list(self._store.values())
        return [o for o in objs if matches(o, labels)
                and (namespace is None or o["metadata"].get("namespace") == namespace)]

    def arrival(self, namespace: str | None, name: str) -> float | None:
        """When the object was first stored here, None if it is not."""
        with self._lock:
            return self._arrived.get((namespace, name))

    def items(self) -> list[Manifest]:
        with self._lock:
            return list(self._store.values())

    def put(self, obj: Manifest) -> None:
        """What this process just wrote: later reads see it, and it is handled as a change
        now (the watch event that confirms it then finds nothing new, so a write must not
        hide the change from the handler). Unless the watch was faster and already stored a
        newer version (a controller's status update right after our create): going back to
        ours would lose that change until the next resync."""
        if obj.get("metadata", {}).get("name") and self._wanted(obj):
            self._apply(obj, key_of(obj))

    def remove(self, namespace: str | None, name: str) -> None:
        self._apply(None, (namespace, name))

    # ---------------------------------------------------------------- list and watch

    def _apply(self, obj: Manifest | None, key: Key) -> None:
        """Store ``obj`` under ``key`` (None deletes) and report a real change; a version
        older than the stored one is dropped. The check and the store are one step under the
        lock: a watch event and a worker's ``put`` of its own write race, and the older of
        the two stored last would stay until the next relist (minutes), no event to come."""
        with self._lock:
            old = self._store.get(key)
            if obj is not None and old is not None and _older(obj, old):
                return
            for item in _labels(old):
                if (keys := self._by_label.get(item)) is not None:
                    keys.discard(key)
                    if not keys:
                        del self._by_label[item]
            if obj is None:
                self._store.pop(key, None)
                self._arrived.pop(key, None)
            else:
                self._store[key] = obj
                self._arrived.setdefault(key, time.monotonic())
                for item in _labels(obj):
                    self._by_label.setdefault(item, set()).add(key)
        if old != obj and self.on_change is not None:
            try:
                self.on_change(old, obj)
            except Exception:  # a bad handler must not stop the watch
                LOG.exception("handling a %s change failed", self.kind)

    def _relist(self, namespace: str | None) -> str:
        found = self.kube.request("GET", self._query(namespace)) or {}
        fresh = {key_of(o): o for o in found.get("items") or [] if self._wanted(o)}
        with self._lock:  # workers put() while this runs
            known = list(self._store)
        gone = {k for k in known if namespace is None or k[0] == namespace} - set(fresh)
        for key in gone:
            self._apply(None, key)
        for key, obj in fresh.items():
            self._apply(obj, key)
        self._listed.add(namespace)
        if self._listed >= set(self.namespaces):
            self.synced.set()
        return str((found.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, namespace: str | None, version: str, stop: threading.Event) -> None:
        query = {"watch": "true", "timeoutSeconds": str(WATCH_SECONDS),
                 "allowWatchBookmarks": "true"}
        if version:
            query["resourceVersion"] = version
        for event in self.kube.stream(self._query(namespace, **query), WATCH_SECONDS + 30):
            if stop.is_set():
                return
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":  # 410 Gone and the like: relist
                return
            if kind not in ("ADDED", "MODIFIED", "DELETED") or not obj.get("metadata"):
                continue
            keep = kind != "DELETED" and self._wanted(obj)
            self._apply(obj if keep else None, key_of(obj))

    def run(self, namespace: str | None, stop: threading.Event) -> None:
        """List ``namespace`` (None: all), then watch until the stream ends; again until
        ``stop``."""
        pause = 1.0
        while not stop.is_set():
            try:
                self._watch(namespace, self._relist(namespace), stop)
                pause = 1.0
            except Exception as exc:  # API down, RBAC, a dropped stream: back off, relist
                LOG.warning("watching %s failed (%s); retrying in %.0f s", self.kind, exc, pause)
                stop.wait(pause)
                pause = min(pause * 2, 30.0)


class Cache:
    """The informers of every cached kind, by (apiVersion, kind)."""

    def __init__(self, informers: Iterable[Informer]):
        self.informers = {(i.api_version, i.kind): i for i in informers}

    def of(self, api_version: str, kind: str) -> Informer | None:
        """The informer of a kind once it has listed (before that, callers ask the API)."""
        found = self.informers.get((api_version, kind))
        return found if found is not None and found.synced.is_set() else None

    def start(self, stop: threading.Event) -> None:
        for informer in self.informers.values():
            for namespace in informer.namespaces:
                threading.Thread(target=informer.run, args=(namespace, stop), daemon=True,
                                 name=f"watch-{informer.kind}-{namespace or 'all'}").start()

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(i.synced.wait(max(0.0, deadline - time.monotonic()))
                   for i in self.informers.values())


QueueKey = tuple[str, str | None, str]
"""(kind, namespace, name)."""


Rank = Callable[[QueueKey], float]
"""Which due key goes first: the lowest rank."""


class WorkQueue:
    """Objects to reconcile, each at most once at a time; a key asked for while it runs is
    run again afterwards, and one asked for twice before it runs runs once. Of the keys due,
    the lowest ``rank`` runs first (the operator ranks by job age, so a burst of jobs gets
    its children job after job instead of every job at the end of the burst). ``rank`` is
    called under the queue's lock, so it must not call ``add``."""

    def __init__(self, rank: Rank | None = None) -> None:
        self._rank = rank or (lambda key: 0.0)
        self._cond = threading.Condition()
        self._due: list[tuple[float, QueueKey]] = []
        """Keys waiting for their time (superseded entries are skipped)."""
        self._ready: list[tuple[float, int, QueueKey]] = []
        """Keys whose time has come, by rank, then in the order they came due."""
        self._queued: set[QueueKey] = set()
        """The keys in ``_ready``."""
        self._order = itertools.count()
        self._when: dict[QueueKey, float] = {}
        self._running: set[QueueKey] = set()
        self._again: set[QueueKey] = set()
        self._active = time.monotonic()
        """When a key last ran or was due, as ``idle_for`` saw it or a worker finished."""

    def add(self, key: QueueKey, delay: float = 0.0) -> None:
        """Reconcile ``key`` in ``delay`` seconds (or sooner, if already asked for sooner)."""
        when = time.monotonic() + delay
        with self._cond:
            if key in self._when and self._when[key] <= when:
                return
            if key in self._running and delay <= 0:
                self._again.add(key)
                return
            self._when[key] = when
            heapq.heappush(self._due, (when, key))
            self._cond.notify()

    def __len__(self) -> int:
        return len(self._when)

    def idle_for(self) -> float:
        """Seconds since a key last ran or was due (0 while one is)."""
        with self._cond:
            now = time.monotonic()
            if self._running or self._ready or (self._due and self._due[0][0] <= now):
                self._active = now
            return now - self._active

    def _take(self, stop: threading.Event) -> QueueKey | None:
        with self._cond:
            while not stop.is_set():
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    when, key = heapq.heappop(self._due)
                    if self._when.get(key) == when and key not in self._queued:
                        self._queued.add(key)
                        heapq.heappush(self._ready, (self._rank(key), next(self._order), key))
                while self._ready:
                    key = heapq.heappop(self._ready)[2]
                    self._queued.discard(key)
                    del self._when[key]
                    if key in self._running:  # its worker re-adds it when done
                        self._again.add(key)
                        continue
                    self._running.add(key)
                    return key
                self._cond.wait(min(1.0, self._due[0][0] - now) if self._due else 1.0)
        return None

    def _done(self, key: QueueKey) -> None:
        with self._cond:
            self._running.discard(key)
            self._active = time.monotonic()
            again = key in self._again
            self._again.discard(key)
        if again:
            self.add(key)

    def work(self, handle: Callable[[QueueKey], None], stop: threading.Event) -> None:
        """One worker: take due keys and ``handle`` them until ``stop``."""
        while (key := self._take(stop)) is not None:
            try:
                handle(key)
            except Exception:  # handle() reports its own errors; never lose the worker
                LOG.exception("reconciling %s failed", key)
            finally:
                self._done(key)

