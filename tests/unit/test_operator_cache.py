"""The pure parts of the informer-driven reconciler: drift normalisation, who owns replicas,
API errors into the ChildrenReady condition, the work queue and when a job is visited again."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from rlaif.operator import conditions, reconcile
from rlaif.operator.handlers import watch_namespaces
from rlaif.operator.informer import Informer, WorkQueue
from rlaif.operator.kube import ApiError
from rlaif.operator.meta import TEMPLATE_HASH_ANNOTATION, drifted

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_drift_ignores_server_defaults_and_number_forms() -> None:
    stored = {"replicas": "1", "maxWaitMs": 20.0, "strategy": {"type": "RollingUpdate"},
              "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}}
    assert not drifted(stored, {"replicas": 1, "maxWaitMs": 20,
                                "resources": {"limits": {"cpu": "1"}}, "unset": None})
    assert drifted(stored, {"replicas": 2})
    assert drifted(stored, {"resources": {"limits": {"memory": "2Gi"}}})
    assert drifted({"args": ["a", "b"]}, {"args": ["a"]})
    assert drifted({"flag": 1}, {"flag": True})


def _deployment(replicas: int, template_hash: str) -> dict[str, object]:
    return {"metadata": {"annotations": {TEMPLATE_HASH_ANNOTATION: template_hash}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"spec": {}}}}


def test_deployment_patches_only_what_differs_after_normalising() -> None:
    stored, built = _deployment(5, "h1"), _deployment(2, "h1")
    assert reconcile.deployment_patch(stored, _deployment(5, "h1")) is None
    stored["spec"]["replicas"] = "5"  # type: ignore[index]
    assert reconcile.deployment_patch(stored, _deployment(5, "h1")) is None
    assert reconcile.deployment_patch(stored, built) == {
        "metadata": {"annotations": {TEMPLATE_HASH_ANNOTATION: "h1"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}}}}
    patch = reconcile.deployment_patch(stored, _deployment(5, "h2"))
    assert patch is not None and "template" in patch["spec"]


def test_refused_child_writes_become_a_children_ready_reason() -> None:
    quota = ApiError(403, "POST", "/apis/apps/v1/namespaces/ml/deployments",
                     '{"kind": "Status", "reason": "Forbidden", "message": "deployments.apps '
                     '\\"x\\" is forbidden: exceeded quota: gpu"}')
    invalid = ApiError(422, "POST", "/api/v1/namespaces/ml/services", '{"reason": "Invalid", '
                       '"message": "Service \\"x\\" is invalid", "details": {"causes": '
                       '[{"field": "spec.ports[0].port"}]}}')
    webhook = ApiError(400, "POST", "/x", '{"message": "admission webhook \\"policy\\" denied '
                       'the request: no GPUs here"}')
    cases = [(quota, "QuotaExceeded", "exceeded quota"),
             (invalid, "Invalid", "fields: spec.ports[0].port"),
             (webhook, "AdmissionDenied", "no GPUs here")]
    for exc, reason, text in cases:
        conds = conditions.children_condition(
            [], (exc.status, exc.reason, exc.detail, exc.fields), f"{exc.method} {exc.path}", NOW)
        (cond,) = conds
        assert (cond["type"], cond["status"], cond["reason"]) == ("ChildrenReady", "False",
                                                                  reason)
        assert text in cond["message"] and exc.path in cond["message"]
    fixed = conditions.children_condition(conds, None, "", NOW)
    assert fixed[0]["status"] == "True" and fixed[0]["reason"] == "Synced"


def test_the_queue_runs_a_key_once_at_a_time_and_collapses_repeats() -> None:
    queue, stop = WorkQueue(), threading.Event()
    seen: list[tuple[str, str | None, str]] = []
    gate = threading.Event()

    def handle(key: tuple[str, str | None, str]) -> None:
        seen.append(key)
        if len(seen) == 1:
            queue.add(key)  # asked for again while it runs: runs once more afterwards
            queue.add(key)
            gate.wait(5)

    for _ in range(3):
        queue.add(("RLAIFJob", "ns", "a"))
    workers = [threading.Thread(target=queue.work, args=(handle, stop)) for _ in range(3)]
    for w in workers:
        w.start()
    gate.set()
    for _ in range(100):
        if len(seen) == 2 and not len(queue):
            break
        stop.wait(0.05)
    stop.set()
    for w in workers:
        w.join(5)
    assert seen == [("RLAIFJob", "ns", "a")] * 2


def test_jobs_are_visited_until_they_finish_then_at_their_ttl() -> None:
    running = {"spec": {}, "status": {"phase": "Starting"}}
    assert reconcile.next_visit(running, reconcile.Outcome(), 30, NOW) == 30
    done = {"spec": {"runPolicy": {"ttlSecondsAfterFinished": 600}},
            "status": {"phase": "Succeeded",
                       "completionTime": conditions.now_iso(NOW - timedelta(seconds=100))}}
    assert reconcile.next_visit(done, reconcile.Outcome(), 30, NOW) == 500
    assert reconcile.next_visit({"status": {"phase": "Failed"}}, reconcile.Outcome(), 30,
                                NOW) is None
    finishing = reconcile.Outcome(status={"phase": "Succeeded"})
    assert reconcile.next_visit(running, finishing, 30, NOW) == 0.0  # release rewards now


def test_watch_namespaces_come_from_kopfs_arguments() -> None:
    assert watch_namespaces(["rlaif", "operator", "--all-namespaces"]) is None
    assert watch_namespaces(["x", "--namespace", "ml", "-n", "a", "--namespace=b"]) == [
        "ml", "a", "b"]


def test_an_owned_server_follows_the_reward_but_keeps_its_replicas() -> None:
    stored = {"kind": "asr", "model": "/m", "replicas": 5, "maxBatch": "16",
              "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}
    built = {"kind": "asr", "model": "/m", "replicas": 1, "maxBatch": 16,
             "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}
    assert reconcile.server_spec_patch(stored, built) is None
    assert reconcile.server_spec_patch(stored, {**built, "model": "/n"}) == {
        **{k: v for k, v in built.items() if k != "replicas"}, "model": "/n"}
    unscaled = {k: v for k, v in built.items() if k != "autoscaling"}
    assert (reconcile.server_spec_patch(stored, unscaled) or {}).get("autoscaling", 0) is None


def test_a_watch_event_or_a_relist_older_than_a_write_does_not_replace_it() -> None:
    """What this process wrote (put) stays until the watch brings a newer version: neither
    the watch's older event nor a relist that was answered before the write takes it back."""
    def version(name: str, rv: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "n", "resourceVersion": rv}}

    class Listing:  # the API's answer to the relist's GET (no API server in a unit test)
        def request(self, method: str, url: str) -> dict[str, Any]:
            return {"metadata": {"resourceVersion": "11"},
                    "items": [version("a", "11"), version("b", "1")]}

    changes: list[tuple[object, object]] = []
    informer = Informer(Listing(), "v1", "ConfigMap",  # type: ignore[arg-type]
                        on_change=lambda old, new: changes.append((old, new)))
    informer.put(version("a", "12"))
    informer._apply(version("a", "11"), ("n", "a"))  # the watch's event of an older write
    informer._relist(None)
    assert informer.get("n", "a") == version("a", "12")
    assert informer.get("n", "b") == version("b", "1")
    assert changes == [(None, version("a", "12")), (None, version("b", "1"))]
    informer._apply(version("a", "13"), ("n", "a"))
    assert informer.get("n", "a") == version("a", "13")


def test_a_write_older_than_the_watched_version_does_not_replace_it() -> None:
    """A Deployment's controller may update it (ready) before our create's answer is put:
    the cache keeps the newer version, and no change is reported for the older one."""
    changes: list[tuple[object, object]] = []
    informer = Informer(None, "apps/v1", "Deployment",  # type: ignore[arg-type]  # no API used
                        on_change=lambda old, new: changes.append((old, new)))
    ready = {"metadata": {"name": "d", "namespace": "n", "resourceVersion": "8"},
             "status": {"readyReplicas": 1}}
    informer._apply(ready, ("n", "d"))  # what the watch delivers
    informer.put({"metadata": {"name": "d", "namespace": "n", "resourceVersion": "7"}})
    assert informer.get("n", "d") == ready
    assert changes == [(None, ready)]
    newer = {"metadata": {"name": "d", "namespace": "n", "resourceVersion": "9"}}
    informer.put(newer)
    assert informer.get("n", "d") == newer


def test_a_select_follows_label_changes_and_deletions() -> None:
    """The label index behind select() is kept with every change, put and removal."""
    informer = Informer(None, "batch/v1", "Job")  # type: ignore[arg-type]  # no API used

    def job(name: str, ns: str = "n", **labels: str) -> dict[str, object]:
        return {"metadata": {"name": name, "namespace": ns, "labels": labels}}

    def names(ns: str | None, **labels: str) -> set[str]:
        return {o["metadata"]["name"] for o in informer.select(ns, labels)}

    informer.put(job("a", job="x", component="trainer"))
    informer.put(job("b", job="y", component="trainer"))
    informer.put(job("c", "m", job="x", component="trainer"))
    assert names("n", job="x", component="trainer") == {"a"}
    assert names(None, job="x") == {"a", "c"} and names("n") == {"a", "b"}
    informer.put(job("a", job="y", component="trainer"))  # relabelled
    assert names("n", job="x") == set() and names("n", job="y") == {"a", "b"}
    informer.remove("n", "b")
    assert names("n", component="trainer") == {"a"} and names("n", job="z") == set()


def test_due_keys_run_lowest_rank_first_and_delayed_ones_when_due() -> None:
    ranks = {"late": 0.0, "c": 3.0, "a": 1.0, "b": 2.0}
    queue, stop, seen = WorkQueue(lambda key: ranks[key[2]]), threading.Event(), []

    def handle(key: tuple[str, str | None, str]) -> None:
        seen.append(key[2])
        if len(seen) == 4:
            stop.set()

    queue.add(("RLAIFJob", "ns", "late"), 1.0)  # best rank, but not due yet
    for name in ("c", "a", "b"):
        queue.add(("RLAIFJob", "ns", name))
    worker = threading.Thread(target=queue.work, args=(handle, stop))
    worker.start()
    worker.join(5)
    stop.set()
    assert seen == ["a", "b", "c", "late"]


def test_a_job_owned_server_ranks_as_its_job_oldest_first(monkeypatch: Any) -> None:
    from rlaif import constants as c
    from rlaif.operator import handlers
    from rlaif.operator.informer import Cache

    jobs = Informer(None, c.API_VERSION, c.JOB_KIND)  # type: ignore[arg-type]
    servers = Informer(None, c.API_VERSION, c.SERVER_KIND)  # type: ignore[arg-type]
    monkeypatch.setattr(handlers, "CACHE", Cache([jobs, servers]))

    def obj(kind: str, name: str, owner: str | None = None) -> dict[str, Any]:
        refs = [{"kind": c.JOB_KIND, "name": owner, "controller": True}] if owner else []
        return {"kind": kind, "metadata": {"namespace": "ml", "name": name,
                                           "ownerReferences": refs}}

    for informer, body in ((jobs, obj(c.JOB_KIND, "old")), (jobs, obj(c.JOB_KIND, "new")),
                           (servers, obj(c.SERVER_KIND, "new-asr", "new")),
                           (servers, obj(c.SERVER_KIND, "old-asr", "old")),
                           (servers, obj(c.SERVER_KIND, "shared"))):
        informer.put(body)
        threading.Event().wait(0.001)  # distinct arrival times

    def rank(kind: str, name: str) -> float:
        return handlers._rank((kind, "ml", name))

    assert rank(c.SERVER_KIND, "old-asr") == rank(c.JOB_KIND, "old")
    assert rank(c.SERVER_KIND, "new-asr") == rank(c.JOB_KIND, "new")
    assert rank(c.JOB_KIND, "old") < rank(c.JOB_KIND, "new") < rank(c.SERVER_KIND, "shared")
    jobs.remove("ml", "old")  # gone: its arrival is forgotten, so it ranks as new work
    assert rank(c.JOB_KIND, "old") > rank(c.SERVER_KIND, "shared")


def test_the_queue_is_idle_only_once_nothing_runs_or_is_due() -> None:
    queue, stop, release = WorkQueue(), threading.Event(), threading.Event()
    queue.add(("RLAIFJob", "ns", "a"))
    assert queue.idle_for() == 0.0  # due
    worker = threading.Thread(target=queue.work, args=(lambda key: release.wait(5), stop))
    worker.start()
    stop.wait(0.1)
    assert queue.idle_for() == 0.0  # running
    release.set()
    for _ in range(100):  # until the worker is done
        if queue.idle_for() > 0:
            break
        stop.wait(0.05)
    stop.wait(0.2)
    assert queue.idle_for() >= 0.2
    queue.add(("RLAIFJob", "ns", "b"), delay=60)  # due later: still idle now
    assert queue.idle_for() >= 0.2
    stop.set()
    worker.join(5)
