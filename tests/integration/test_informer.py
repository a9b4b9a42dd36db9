"""The informer against the Kubernetes emulator and the real API client: one list, then one
watch, both with the server-side label selector; changes reach the handler and the store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.operator_emulator import EmulatedCluster, wait_for
from rlaif import constants as c
from rlaif.operator.informer import Cache, Informer
from rlaif.operator.kube import Kube, Manifest

OWNED = {c.LABEL_MANAGED_BY: c.PART_OF}
SELECTOR = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Drlaif-operator"


class RecordingKube(Kube):
    """The real client, noting each URL it asks for and each object its watches received."""

    urls: list[str]
    streamed: list[Manifest]

    def request(self, method: str, url: str, body: Any = None,
                content_type: str = "application/json") -> Manifest | None:
        self.urls.append(f"{method} {url}")
        return super().request(method, url, body, content_type)

    def stream(self, url: str, timeout: float) -> Iterator[Manifest]:
        self.urls.append(f"WATCH {url}")
        for event in super().stream(url, timeout):
            self.streamed.append(event["object"])
            yield event


def deployment(name: str, labels: dict[str, str]) -> Manifest:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"replicas": 1}}


def test_informer_lists_and_watches_only_owned_objects(tmp_path: Path) -> None:
    with EmulatedCluster(tmp_path) as cluster:
        kube = RecordingKube(cluster.client().api)
        kube.urls, kube.streamed = [], []
        kube.create(deployment("ours", OWNED))
        kube.create(deployment("theirs", {"app": "other"}))
        changes: list[tuple[Manifest | None, Manifest | None]] = []
        informer = Informer(kube, "apps/v1", "Deployment", labels=OWNED,
                            on_change=lambda old, new: changes.append((old, new)))
        stop = threading.Event()
        cache = Cache([informer])
        cache.start(stop)
        try:
            assert cache.wait_synced(10)
            assert cache.of("apps/v1", "Deployment") is informer
            assert informer.get("ns", "ours") is not None
            assert informer.get("ns", "theirs") is None
            informer.put(deployment("foreign", {"app": "other"}))  # as from a server that
            assert informer.get("ns", "foreign") is None  # ignores selectors: filtered here
            kube.patch("apps/v1", "Deployment", "ns", "ours", {"spec": {"replicas": 3}})
            kube.patch("apps/v1", "Deployment", "ns", "theirs", {"spec": {"replicas": 3}})
            wait_for(lambda: (informer.get("ns", "ours") or {}).get("spec", {}).get(
                "replicas") == 3, what="the watched change")
            kube.delete("apps/v1", "Deployment", "ns", "ours")
            wait_for(lambda: informer.get("ns", "ours") is None, what="the watched delete")
        finally:
            stop.set()
            kube.create(deployment("last", OWNED))  # the watch sees stop at its next event
            wait_for(lambda: not [t for t in threading.enumerate()
                                  if t.name.startswith("watch-")], what="the watch to end")
    names = [(old or new or {})["metadata"]["name"] for old, new in changes]
    assert set(names) <= {"ours", "last"} and "ours" in names, "only owned objects"
    assert changes[0][0] is None and changes[-1][1] is None  # added ... deleted
    ours = [url for url in kube.urls if "/deployments?" in url]
    assert [url.split()[0] for url in ours][:2] == ["GET", "WATCH"]
    assert all(SELECTOR in url for url in ours)


def test_the_events_watch_gets_only_failed_creates_of_jobs(tmp_path: Path) -> None:
    """The field selector is applied by the server (the emulator, as an API server does), so
    the operator does not stream every Event of the cluster."""
    def event(name: str, reason: str, kind: str) -> Manifest:
        return {"apiVersion": "v1", "kind": "Event", "reason": reason,
                "metadata": {"name": name, "namespace": "ns"},
                "involvedObject": {"kind": kind, "name": "x", "namespace": "ns"}}

    fields = {"reason": "FailedCreate", "involvedObject.kind": "Job"}
    with EmulatedCluster(tmp_path) as cluster:
        kube = RecordingKube(cluster.client().api)
        kube.urls, kube.streamed = [], []
        kube.create(event("listed", "FailedCreate", "Job"))
        kube.create(event("pulled", "Pulled", "Pod"))
        informer = Informer(kube, "v1", "Event", fields=fields)
        stop = threading.Event()
        Cache([informer]).start(stop)
        try:
            assert informer.synced.wait(10)
            kube.create(event("watched", "FailedCreate", "Job"))
            kube.create(event("other-kind", "FailedCreate", "Pod"))
            kube.create(event("other-reason", "Scheduled", "Job"))
            wait_for(lambda: informer.get("ns", "watched") is not None, what="the watched Event")
        finally:
            stop.set()
            kube.create(event("last", "FailedCreate", "Job"))  # the watch sees stop then
            wait_for(lambda: not [t for t in threading.enumerate()
                                  if t.name.startswith("watch-")], what="the watch to end")
    assert {e["metadata"]["name"] for e in informer.items()} >= {"listed", "watched"}
    streamed = {e["metadata"]["name"] for e in kube.streamed}
    assert "watched" in streamed
    assert streamed <= {"listed", "watched", "last"}  # (a watch starts with a snapshot)
