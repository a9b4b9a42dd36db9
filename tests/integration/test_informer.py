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
    """The real client, noting each URL it asks for (the emulator ignores selectors, so the
    URL is where the server-side selector shows)."""

    urls: list[str]

    def request(self, method: str, url: str, body: Any = None,
                content_type: str = "application/json") -> Manifest | None:
        self.urls.append(f"{method} {url}")
        return super().request(method, url, body, content_type)

    def stream(self, url: str, timeout: float) -> Iterator[Manifest]:
        self.urls.append(f"WATCH {url}")
        return super().stream(url, timeout)


def deployment(name: str, labels: dict[str, str]) -> Manifest:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"replicas": 1}}


def test_informer_lists_and_watches_only_owned_objects(tmp_path: Path) -> None:
    with EmulatedCluster(tmp_path) as cluster:
        kube = RecordingKube(cluster.client().api)
        kube.urls = []
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
