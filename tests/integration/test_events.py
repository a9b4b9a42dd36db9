"""The Event recorder against the Kubernetes emulator: Events wait while reconciliations
run, keep their order, are bounded in number, and what is left is posted on stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from benchmarks.operator_emulator import EmulatedCluster, wait_for
from rlaif.operator.events import Recorder
from rlaif.operator.kube import Kube, Manifest


def about(name: str) -> Manifest:
    return {"apiVersion": "rlaif.dev/v1alpha1", "kind": "RLAIFJob",
            "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}"}}


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    with EmulatedCluster(tmp_path_factory.mktemp("events")) as cluster:
        yield cluster.client()


def posted(kube: Kube, name: str) -> list[str]:
    found = kube.events_for("ml", name)
    return [e["reason"] for e in sorted(found, key=lambda e: e["metadata"]["resourceVersion"]
                                        .zfill(20))]


class Recording:
    """A started recorder, with a switch for whether the operator is busy."""

    def __init__(self, kube: Kube, max_delay: float, limit: int = 100) -> None:
        self.busy = True
        self.recorder = Recorder(kube, lambda: 0.0 if self.busy else 1.0,
                                 max_delay=max_delay, limit=limit)
        self.stop = threading.Event()
        self.recorder.start(self.stop)

    def record(self, name: str, *reasons: str) -> None:
        for reason in reasons:
            self.recorder.record(about(name), "Normal", reason, f"{reason} happened")

    def close(self) -> None:
        self.stop.set()
        self.recorder.join()  # what is left is posted by then


def test_events_wait_while_reconciliations_run_then_go_in_order(kube: Kube) -> None:
    rec = Recording(kube, max_delay=60)
    try:
        rec.record("waits", "First", "Second", "Third")
        time.sleep(0.5)
        assert posted(kube, "waits") == []
        rec.busy = False
        wait_for(lambda: len(posted(kube, "waits")) == 3, what="the Events")
        assert posted(kube, "waits") == ["First", "Second", "Third"]
    finally:
        rec.close()


def test_an_event_goes_after_max_delay_even_while_busy(kube: Kube) -> None:
    rec = Recording(kube, max_delay=0.3)
    try:
        start = time.monotonic()
        rec.record("overdue", "Late")
        wait_for(lambda: posted(kube, "overdue") == ["Late"], what="the overdue Event")
        assert time.monotonic() - start >= 0.3
    finally:
        rec.close()


def test_past_the_limit_the_oldest_waiting_events_are_dropped(kube: Kube) -> None:
    rec = Recording(kube, max_delay=60, limit=2)
    try:
        rec.record("flood", "One", "Two", "Three")
        assert rec.recorder.dropped == 1
        rec.busy = False
        wait_for(lambda: len(posted(kube, "flood")) == 2, what="the Events kept")
        assert posted(kube, "flood") == ["Two", "Three"]
    finally:
        rec.close()


def test_what_is_left_is_posted_on_stop(kube: Kube) -> None:
    rec = Recording(kube, max_delay=60)
    rec.record("left", "Pending", "AlsoPending")
    time.sleep(0.2)
    assert posted(kube, "left") == []
    rec.close()
    assert posted(kube, "left") == ["Pending", "AlsoPending"]
