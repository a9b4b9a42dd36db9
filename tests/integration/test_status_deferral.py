"""A reconciliation that creates children defers its status to the pass their watch events
bring (reconcile._report): against the emulator and the real client, with no operator
running, so each pass is one call here."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import kmock
import pytest
import yaml

from benchmarks.operator_emulator import REPO, EmulatedCluster
from rlaif import constants as c
from rlaif.operator import reconcile
from rlaif.operator.kube import Kube, Manifest
from rlaif.operator.settings import OperatorConfig

NS = "deferral"
NOW = datetime(2026, 12, 3, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    with EmulatedCluster(tmp_path_factory.mktemp("emulator")) as cluster:
        cluster.kubectl("apply", "--validate=false", "-f", str(REPO / "manifests" / "crds"))
        yield cluster


@pytest.fixture(scope="module")
def kube(cluster: EmulatedCluster) -> Kube:
    return cluster.client()


def server(kube: Kube, name: str) -> Manifest:
    doc = yaml.safe_load((REPO / "examples" / "rewardserver-shared.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NS}
    kube.create(doc)
    return stored(kube, name)


def stored(kube: Kube, name: str) -> Manifest:
    found = kube.get(c.API_VERSION, c.SERVER_KIND, NS, name)
    assert found is not None
    return found


def test_the_pass_that_creates_children_defers_and_the_next_writes(kube: Kube) -> None:
    first = reconcile.reconcile_server(kube.session(), server(kube, "deferred"), NOW,
                                       defer=True)
    assert first.deferred and first.events == []
    assert kube.get("apps/v1", "Deployment", NS, "deferred") is not None  # children made
    assert not stored(kube, "deferred").get("status"), "no status written yet"

    second = reconcile.reconcile_server(kube.session(), stored(kube, "deferred"), NOW,
                                        defer=True)
    assert not second.deferred, "nothing to create: nothing to wait for"
    written = stored(kube, "deferred")["status"]
    assert written == second.status
    ready = next(x for x in written["conditions"] if x["type"] == c.COND_READY)
    assert ready["status"] == "False" and "0/2 replica(s) ready" in ready["message"]
    assert [e[1] for e in second.events] == [ready["reason"]]  # posted once, by this pass


def test_a_pass_told_not_to_defer_writes_although_it_creates(kube: Kube) -> None:
    """What the handler asks of the pass after a deferred one: a child that vanishes every
    time cannot hold the status back."""
    outcome = reconcile.reconcile_server(kube.session(), server(kube, "undeferred"), NOW)
    assert not outcome.deferred and outcome.events
    assert kube.get("apps/v1", "Deployment", NS, "undeferred") is not None
    assert stored(kube, "undeferred")["status"] == outcome.status


def test_a_refused_child_is_reported_at_once_even_when_deferring(
        cluster: EmulatedCluster, kube: Kube) -> None:
    """A job whose servers are refused after its ConfigMap and NetworkPolicy were created
    says so on that pass: an error is news."""
    assert cluster.emulator is not None
    cluster.emulator.refusals[("create", c.SERVER_PLURAL, NS)] = kmock.KubernetesError(
        status=403, reason="Forbidden", message="exceeded quota: rewardservers")
    try:
        doc = yaml.safe_load((REPO / "examples" / "quickstart-cpu.yaml").read_text())
        doc["metadata"] = {"name": "refused", "namespace": NS}
        kube.create(doc)
        body = kube.get(c.API_VERSION, c.JOB_KIND, NS, "refused")
        assert body is not None
        session = kube.session()
        outcome = reconcile.reconcile_job(session, body, OperatorConfig(), NOW, defer=True)
    finally:
        cluster.emulator.refusals.clear()
    assert session.created == 2 and not outcome.deferred and outcome.retry
    status = (kube.get(c.API_VERSION, c.JOB_KIND, NS, "refused") or {}).get("status") or {}
    children = next(x for x in status["conditions"] if x["type"] == "ChildrenReady")
    assert children["status"] == "False" and "exceeded quota" in children["message"]


def test_the_handler_defers_at_most_one_pass_in_a_row(kube: Kube,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A child deleted after every pass is created again each time; the status is written
    on every second pass, not held back for ever."""
    from rlaif.operator import handlers

    monkeypatch.setattr(handlers.kube, "client", lambda: kube)
    monkeypatch.setattr(handlers, "CACHE", None)
    monkeypatch.setattr(handlers, "_leading", lambda: True)
    server(kube, "vanishing")
    key = (c.SERVER_KIND, NS, "vanishing")
    assert handlers._run(*key) == handlers.DEFERRED_SECONDS and key in handlers._deferred
    assert not stored(kube, "vanishing").get("status")
    kube.delete("apps/v1", "Deployment", NS, "vanishing")
    assert handlers._run(*key) is None and key not in handlers._deferred
    assert kube.get("apps/v1", "Deployment", NS, "vanishing") is not None  # made again
    assert stored(kube, "vanishing")["status"]["conditions"]
    kube.delete("apps/v1", "Deployment", NS, "vanishing")
    assert handlers._run(*key) == handlers.DEFERRED_SECONDS  # the next may defer again
    kube.delete(c.API_VERSION, c.SERVER_KIND, NS, "vanishing")
    assert handlers._run(*key) is None and key not in handlers._deferred  # forgotten


def test_a_counted_failure_is_written_by_the_pass_that_counts_it(kube: Kube) -> None:
    """With no restart backoff, the pass that counts a failed gang also creates its
    successor; the next pass sees only the successor, so deferring would lose the count
    (and the backoffLimit with it)."""
    from tests.integration.test_operator import fail_trainer, run_trainer_pods

    doc = yaml.safe_load((REPO / "examples" / "quickstart-cpu.yaml").read_text())
    doc["metadata"] = {"name": "gang", "namespace": NS}
    kube.create(doc)
    cfg = OperatorConfig(restart_backoff=0.0)

    def visit() -> reconcile.Outcome:
        body = kube.get(c.API_VERSION, c.JOB_KIND, NS, "gang")
        assert body is not None
        return reconcile.reconcile_job(kube.session(), body, cfg, NOW, defer=True)

    assert visit().deferred  # its ConfigMap, NetworkPolicy and servers
    for server in kube.list(c.API_VERSION, c.SERVER_KIND, NS, {c.LABEL_JOB: "gang"}):
        kube.patch(c.API_VERSION, c.SERVER_KIND, NS, server["metadata"]["name"],
                   {"status": {"replicas": 1, "readyReplicas": 1}}, "status")
    assert visit().deferred  # the trainer Service and Job
    run_trainer_pods(kube, NS, "gang-trainer-0")
    assert not visit().deferred
    fail_trainer(kube, NS, "gang-trainer-0")

    counting = visit()
    assert kube.get("batch/v1", "Job", NS, "gang-trainer-1") is not None  # created by it
    assert not counting.deferred
    assert [e[1] for e in counting.events if e[1] == "GangRestart"] == ["GangRestart"]
    status = (kube.get(c.API_VERSION, c.JOB_KIND, NS, "gang") or {})["status"]
    assert status["restarts"] == 1 and status["failedAttempt"] == 0
