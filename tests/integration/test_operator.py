"""The real operator (``rlaif operator``, kopf) against kmock's Kubernetes emulator on loopback,
driven with the real kubectl. The emulator runs no controllers, so the tests play the Job,
Deployment and kubelet parts by writing pod, Job and Deployment status themselves.

One operator process serves the whole module; each test works in its own namespace.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import partial
from typing import Any

import kmock
import pytest
import yaml

from benchmarks.operator_emulator import Call, EmulatedCluster, wait_for
from rlaif import constants as c
from rlaif.operator import admission, reconcile
from rlaif.operator.kube import Kube
from rlaif.operator.reconcile import INDEX_ANNOTATION, JOB_NAME_LABEL
from tests.conftest import EXAMPLES, REPO
from tests.integration import rbac

RJ = (c.API_VERSION, c.JOB_KIND)
RS = (c.API_VERSION, c.SERVER_KIND)
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
METRICS = """\
# TYPE rlaif_step gauge
rlaif_step 12
# TYPE rlaif_total_steps gauge
rlaif_total_steps 30
# TYPE rlaif_reward_mean gauge
rlaif_reward_mean 0.625
# TYPE rlaif_last_checkpoint_step gauge
rlaif_last_checkpoint_step 10
# TYPE rlaif_kl gauge
rlaif_kl 0.003
# TYPE rlaif_reward_mean_by_name gauge
rlaif_reward_mean_by_name{reward="intelligibility"} 0.75
# TYPE rlaif_eval_step gauge
rlaif_eval_step 8
# TYPE rlaif_eval_score gauge
rlaif_eval_score 0.61
# TYPE rlaif_eval_best_step gauge
rlaif_eval_best_step 8
# TYPE rlaif_eval gauge
rlaif_eval{metric="reward"} 0.61
rlaif_eval{metric="intelligibility"} 0.4
# TYPE rlaif_eval_best gauge
rlaif_eval_best{metric="reward"} 0.61
rlaif_eval_best{metric="intelligibility"} 0.8
# TYPE rlaif_reward_hacking gauge
""" + ('rlaif_reward_hacking{metric="intelligibility",rule="minimum",'
       'message="held-out intelligibility 0.400 at step 8 is below its minimum 0.500"} 1\n')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    with EmulatedCluster(workdir) as cl:
        cl.kubectl("apply", "--validate=false", "-f", str(REPO / "manifests" / "crds"))
        cl.start_operator(workdir / "operator.log")
        try:
            yield cl
        finally:
            cl.stop_operator()


@pytest.fixture(scope="module")
def kube(cluster: EmulatedCluster) -> Kube:
    return cluster.client()


@pytest.fixture(scope="module")
def metrics_port() -> Iterator[int]:
    """A stand-in for rank 0's Prometheus endpoint (the trainer cannot run here)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


# --------------------------------------------------------------------------- helpers


def apply(cluster: EmulatedCluster, ns: str, example: str, edit: Any = None) -> dict[str, Any]:
    """``kubectl apply`` an example (optionally edited) into ``ns``."""
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    if edit is not None:
        edit(doc)
    cluster.kubectl("apply", "--validate=false", "-n", ns, "-f", "-", stdin=yaml.safe_dump(doc))
    return doc


def existing(kube: Kube, api_version: str, kind: str, ns: str, name: str) -> dict[str, Any]:
    """An object that should be there; KeyError if not (so wait_for tries again)."""
    found = kube.get(api_version, kind, ns, name)
    if found is None:
        raise KeyError(f"{kind} {ns}/{name} not found")
    return found


def has_replicas(kube: Kube, ns: str, name: str, replicas: int) -> Callable[[], bool]:
    """For wait_for: Deployment ``name`` asks for ``replicas``."""
    return lambda: existing(kube, "apps/v1", "Deployment", ns, name)["spec"]["replicas"] == replicas


def job(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    found = kube.get(*RJ, ns, name)
    assert found is not None, f"RLAIFJob {ns}/{name} is gone"
    return found


def status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return job(kube, ns, name).get("status") or {}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((x for x in st.get("conditions") or [] if x["type"] == type_), {})


def wait_phase(kube: Kube, ns: str, name: str, phase: str, timeout: float = 20) -> dict[str, Any]:
    return wait_for(lambda: (s := status(kube, ns, name)).get("phase") == phase and s,
                    timeout, f"{ns}/{name} phase {phase} (now {status(kube, ns, name)})")


def make_servers_ready(kube: Kube, ns: str, names: list[str]) -> None:
    """Play the Deployment controller: every server's pods are ready."""
    for name in names:
        dep = wait_for(partial(kube.get, "apps/v1", "Deployment", ns, name), what=name)
        n = dep["spec"]["replicas"]
        kube.patch("apps/v1", "Deployment", ns, name,
                   {"status": {"replicas": n, "readyReplicas": n}}, "status")


def pod_labels(kube: Kube, ns: str, job_name: str) -> dict[str, str]:
    """The labels the Job controller gives a batch Job's pods: its template's and its name."""
    job = existing(kube, "batch/v1", "Job", ns, job_name)
    return {**job["spec"]["template"]["metadata"]["labels"], JOB_NAME_LABEL: job_name}


def run_trainer_pods(kube: Kube, ns: str, job_name: str, nodes: int = 1) -> None:
    """Play the Job controller and kubelet: the gang's pods run, rank 0 on loopback."""
    for i in range(nodes):
        kube.ensure({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{job_name}-{i}", "namespace": ns, "labels": pod_labels(kube, ns, job_name),
            "annotations": {INDEX_ANNOTATION: str(i)}},
            "spec": {"containers": [{"name": "trainer", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [
                {"name": "trainer", "ready": True, "state": {"running": {}}}]}})
    kube.patch("batch/v1", "Job", ns, job_name, {"status": {"active": nodes, "ready": nodes}},
               "status")


def fail_trainer(kube: Kube, ns: str, job_name: str, reason: str = "OOMKilled") -> None:
    kube.patch("v1", "Pod", ns, f"{job_name}-0", {"status": {"phase": "Failed",
               "containerStatuses": [{"name": "trainer", "ready": False, "state": {
                   "terminated": {"exitCode": 137, "reason": reason}}}]}}, "status")
    kube.patch("batch/v1", "Job", ns, job_name, {"status": {"active": 0, "failed": 1,
               "conditions": [{"type": "Failed", "status": "True",
                               "reason": "BackoffLimitExceeded"}]}}, "status")


def finish_job(kube: Kube, ns: str, job_name: str) -> None:
    kube.patch("batch/v1", "Job", ns, job_name, {"status": {"active": 0, "succeeded": 1,
               "conditions": [{"type": "Complete", "status": "True"}]}}, "status")


def owner_uid(obj: dict[str, Any] | None) -> str:
    assert obj is not None, "the object is missing"
    (ref,) = obj["metadata"]["ownerReferences"]
    assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
    return ref["uid"]


def events(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return kube.list("v1", "Event", ns, {})


QUICKSTART_SERVERS = ["quickstart-intelligibility", "quickstart-alignment",
                      "quickstart-naturalness"]


# --------------------------------------------------------------------------- tests


def test_crds_pass_kubectl_client_dry_run(cluster: EmulatedCluster) -> None:
    # Schema validation of the CRDs is tests/unit/test_crds.py (kubernetes-validate).
    out = cluster.kubectl("apply", "--dry-run=client", "--validate=false",
                          "-f", str(REPO / "manifests" / "crds"))
    assert "rlaifjobs.rlaif.dev" in out.stdout and "rewardservers.rlaif.dev" in out.stdout


def test_job_runs_through_starting_running_restart_succeeded(
        cluster: EmulatedCluster, kube: Kube, metrics_port: int) -> None:
    ns = "lifecycle"

    def edit(doc: dict[str, Any]) -> None:
        doc["spec"]["trainer"]["metricsPort"] = metrics_port
        doc["spec"]["runPolicy"] = {"backoffLimit": 2}

    apply(cluster, ns, "quickstart-cpu.yaml", edit)
    st = wait_phase(kube, ns, "quickstart", "Starting")
    assert condition(st, c.COND_REWARDS_READY)["status"] == "False"
    uid = job(kube, ns, "quickstart")["metadata"]["uid"]

    # Children: owned by the job, wired to each other.
    cm = wait_for(lambda: kube.get("v1", "ConfigMap", ns, "quickstart-config"), what="config")
    assert owner_uid(cm) == uid
    config = yaml.safe_load(cm["data"][c.CONFIG_FILE])
    assert {r["url"] for r in config["rewards"]} == {
        f"http://{s}.{ns}.svc:{c.REWARD_PORT}" for s in QUICKSTART_SERVERS}
    for name in QUICKSTART_SERVERS:
        server = wait_for(partial(kube.get, *RS, ns, name), what=name)
        assert owner_uid(server) == uid
        dep = wait_for(partial(kube.get, "apps/v1", "Deployment", ns, name), what=name)
        assert owner_uid(dep) == server["metadata"]["uid"]
        assert owner_uid(kube.get("v1", "Service", ns, name)) == server["metadata"]["uid"]
    policy = kube.get("networking.k8s.io/v1", "NetworkPolicy", ns, "quickstart-rewards")
    assert owner_uid(policy) == uid
    assert kube.get("batch/v1", "Job", ns, "quickstart-trainer-0") is None, \
        "trainers must wait for the reward servers"

    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    trainer = wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"),
                       what="trainer Job")
    assert owner_uid(trainer) == uid
    assert owner_uid(kube.get("v1", "Service", ns, "quickstart-trainer")) == uid
    # The pass that created them writes no status (it would describe the cluster before
    # them); the pass their watch events bring, moments later, does.
    st = wait_for(lambda: (s := status(kube, ns, "quickstart")) and condition(
        s, c.COND_REWARDS_READY)["status"] == "True" and s, what="RewardsReady")
    assert [r["readyReplicas"] for r in st["rewards"]] == [1, 1, 1]

    run_trainer_pods(kube, ns, "quickstart-trainer-0")
    st = wait_for(lambda: (s := status(kube, ns, "quickstart")).get("step") == 12 and s,
                  what="scraped metrics")
    assert st["phase"] == "Running" and st["totalSteps"] == 30 and st["startTime"]
    assert st["metrics"] == {"reward": 0.625, "kl": 0.003, "reward_intelligibility": 0.75}
    # the held-out evaluation (kubectl get rj -o wide: Held-Out) and the guard's finding
    assert st["evaluation"] == {"step": 8, "score": 0.61, "bestStep": 8,
                                "metrics": {"reward": 0.61, "intelligibility": 0.4},
                                "best": {"reward": 0.61, "intelligibility": 0.8}}
    hacking = condition(st, c.COND_REWARD_HACKING)
    assert hacking["status"] == "True" and hacking["reason"] == "HeldOutBelowMinimum"
    assert "intelligibility 0.400 at step 8 is below its minimum 0.500" in hacking["message"]
    wide = cluster.kubectl("get", "rj", "quickstart", "-n", ns, "-o", "wide").stdout
    assert "HELD-OUT" in wide and "0.61" in wide
    wait_for(lambda: any(e["reason"] == "HeldOutBelowMinimum" and e["type"] == "Warning"
                         for e in events(kube, ns)), what="a RewardHacking Event")
    assert st["lastCheckpoint"]["path"] == f"{c.CHECKPOINT_DIR}/step-00000010"
    assert st["lastCheckpoint"]["time"]
    assert condition(st, c.COND_READY)["status"] == "True"
    assert st["observedGeneration"] == job(kube, ns, "quickstart")["metadata"]["generation"]

    # A failed rank restarts the whole gang as a new Job; the count survives in status.
    fail_trainer(kube, ns, "quickstart-trainer-0")
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-1"), what="attempt 1")
    st = wait_for(lambda: (s := status(kube, ns, "quickstart")).get("restarts") == 1 and s,
                  what="restart count")
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0") is None,
             what="the failed gang to be deleted")
    wait_for(lambda: any(e["reason"] == "GangRestart" for e in events(kube, ns)),
             what="a GangRestart Event")

    # A restarted operator keeps the count and does not duplicate children.
    cluster.stop_operator()
    cluster.start_operator(cluster.workdir / "operator-2.log")
    run_trainer_pods(kube, ns, "quickstart-trainer-1")
    wait_phase(kube, ns, "quickstart", "Running")
    finish_job(kube, ns, "quickstart-trainer-1")
    st = wait_phase(kube, ns, "quickstart", "Succeeded")
    assert st["restarts"] == 1 and st["completionTime"]
    assert condition(st, c.COND_SUCCEEDED)["reason"] == "Completed"
    jobs = kube.list("batch/v1", "Job", ns, {c.LABEL_JOB: "quickstart"})
    assert [j["metadata"]["name"] for j in jobs] == ["quickstart-trainer-1"]
    wait_for(lambda: {"RewardsReady", "Running", "Completed"} <= {
        e["reason"] for e in events(kube, ns)}, what="Events for each transition")


def running_without_retries(cluster: EmulatedCluster, kube: Kube, ns: str) -> None:
    """The quickstart with backoffLimit 0, its servers ready and attempt 0's gang running."""
    apply(cluster, ns, "quickstart-cpu.yaml",
          lambda d: d["spec"].update(runPolicy={"backoffLimit": 0}))
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"), what="trainer")
    run_trainer_pods(kube, ns, "quickstart-trainer-0")
    wait_phase(kube, ns, "quickstart", "Running")


def test_backoff_exhausted_fails_with_the_trainer_reason(cluster: EmulatedCluster,
                                                         kube: Kube) -> None:
    ns = "backoff"
    running_without_retries(cluster, kube, ns)
    fail_trainer(kube, ns, "quickstart-trainer-0")
    st = wait_phase(kube, ns, "quickstart", "Failed")
    failed = condition(st, c.COND_FAILED)
    assert failed["reason"] == "BackoffLimitExceeded" and "OOMKilled" in failed["message"]
    assert condition(st, c.COND_READY)["status"] == "False"
    wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == "BackoffLimitExceeded"
                         for e in events(kube, ns)), what="a Warning Event")


def test_unschedulable_trainers_surface_in_status(cluster: EmulatedCluster, kube: Kube) -> None:
    ns = "pending"
    apply(cluster, ns, "quickstart-cpu.yaml")
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"), what="trainer")
    kube.ensure({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "quickstart-trainer-0-0", "namespace": ns,
        "labels": pod_labels(kube, ns, "quickstart-trainer-0")},
        "spec": {"containers": [{"name": "trainer", "image": "x"}]},
        "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}})
    st = wait_for(lambda: (s := status(kube, ns, "quickstart")) and condition(
        s, c.COND_READY).get("reason") == "Unschedulable" and s, what="Unschedulable")
    assert st["phase"] == "Starting"
    assert "Insufficient nvidia.com/gpu" in condition(st, c.COND_READY)["message"]


def test_quota_errors_surface_in_status(cluster: EmulatedCluster, kube: Kube) -> None:
    ns = "quota"
    apply(cluster, ns, "quickstart-cpu.yaml")
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"), what="trainer")
    # What the Job controller posts when a ResourceQuota refuses the pods.
    kube.ensure({"apiVersion": "v1", "kind": "Event", "metadata": {
        "name": "quickstart-trainer-0.quota", "namespace": ns},
        "involvedObject": {"kind": "Job", "name": "quickstart-trainer-0", "namespace": ns},
        "reason": "FailedCreate", "type": "Warning",
        "message": 'Error creating: pods "quickstart-trainer-0-0" is forbidden: exceeded quota:'
                   " gpu, requested: requests.nvidia.com/gpu=1, limited: "
                   "requests.nvidia.com/gpu=0"})
    ready = wait_for(lambda: (r := condition(status(kube, ns, "quickstart"), c.COND_READY))
                     .get("reason") == "FailedCreate" and r, what="FailedCreate")
    assert "exceeded quota" in ready["message"]


def test_scaling_a_reward_server_updates_its_deployment(cluster: EmulatedCluster,
                                                        kube: Kube) -> None:
    ns = "scaling"
    apply(cluster, ns, "rewardserver-shared.yaml")
    dep = wait_for(lambda: kube.get("apps/v1", "Deployment", ns, "dnsmos"), what="Deployment")
    assert dep["spec"]["replicas"] == 2
    wait_for(lambda: kube.get("policy/v1", "PodDisruptionBudget", ns, "dnsmos"), what="PDB")
    cluster.kubectl("scale", "-n", ns, "rewardserver/dnsmos", "--replicas=4")
    wait_for(has_replicas(kube, ns, "dnsmos", 4), what="Deployment scaled to 4")
    make_servers_ready(kube, ns, ["dnsmos"])
    st = wait_for(lambda: (s := existing(kube, *RS, ns, "dnsmos").get("status") or {}).get(
        "readyReplicas") == 4 and s, what="RewardServer status")
    assert st["selector"] == "app.kubernetes.io/instance=dnsmos," \
                             "app.kubernetes.io/component=reward-server"
    assert st["endpoint"] == f"http://dnsmos.{ns}.svc:{c.REWARD_PORT}"
    cluster.kubectl("scale", "-n", ns, "rewardserver/dnsmos", "--replicas=1")
    wait_for(lambda: kube.get("policy/v1", "PodDisruptionBudget", ns, "dnsmos") is None,
             what="PDB removed at one replica")


def reconciled(kube: Kube, kind: tuple[str, str], ns: str, name: str) -> None:
    """Wait until the operator has reconciled the object's current spec (its status carries
    the generation it last acted on): a whole pass ran after the last change."""
    obj = existing(kube, *kind, ns, name)
    generation = obj["metadata"]["generation"]
    wait_for(lambda: (existing(kube, *kind, ns, name).get("status") or {}).get(
        "observedGeneration") == generation, what=f"{name} generation {generation} reconciled")


def reconcile_job_again(kube: Kube, ns: str, name: str, weight: float) -> None:
    """Change the first reward's weight (applied live) and wait until the job has acted on it:
    one whole reconciliation of the job and its children, proven rather than slept for."""
    rewards = job(kube, ns, name)["spec"]["rewards"]
    rewards[0]["weight"] = weight
    kube.patch(*RJ, ns, name, {"spec": {"rewards": rewards}})
    reconciled(kube, RJ, ns, name)
    assert f"weight: {weight}" in existing(kube, "v1", "ConfigMap", ns,
                                           f"{name}-config")["data"]["trainer.yaml"]


def test_kubectl_scale_of_a_job_owned_reward_server_sticks(cluster: EmulatedCluster,
                                                           kube: Kube) -> None:
    """Replicas of a job's own reward server are set at creation and then belong to whoever
    scales it: three later reconciliations of the job leave them where kubectl put them."""
    ns, server = "scale-owned", "quickstart-intelligibility"
    apply(cluster, ns, "quickstart-cpu.yaml")
    wait_for(has_replicas(kube, ns, server, 1), what="the job's reward Deployment")
    cluster.kubectl("scale", "-n", ns, f"rewardserver/{server}", "--replicas=3")
    wait_for(has_replicas(kube, ns, server, 3), what="its Deployment scaled to 3")
    for weight in (0.4, 0.6, 0.7):
        reconcile_job_again(kube, ns, "quickstart", weight)
        assert existing(kube, *RS, ns, server)["spec"]["replicas"] == 3
        assert existing(kube, "apps/v1", "Deployment", ns, server)["spec"]["replicas"] == 3


def test_an_autoscaled_reward_server_gets_an_hpa_that_owns_its_replicas(
        cluster: EmulatedCluster, kube: Kube) -> None:
    ns, server = "autoscaled", "quickstart-intelligibility"

    def autoscale(doc: dict[str, Any]) -> None:
        doc["spec"]["rewards"][0]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4}

    apply(cluster, ns, "quickstart-cpu.yaml", autoscale)
    hpa = wait_for(lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, server),
                   what="the HPA")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": c.API_VERSION,
                                             "kind": c.SERVER_KIND, "name": server}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert owner_uid(hpa) == existing(kube, *RS, ns, server)["metadata"]["uid"]
    # What the HPA controller does: write the RewardServer's scale subresource.
    kube.patch(*RS, ns, server, {"spec": {"replicas": 4}}, "scale")
    wait_for(has_replicas(kube, ns, server, 4), what="the Deployment following the HPA")
    for weight in (0.4, 0.6, 0.7):
        reconcile_job_again(kube, ns, "quickstart", weight)
        assert existing(kube, *RS, ns, server)["spec"]["replicas"] == 4
        assert existing(kube, "apps/v1", "Deployment", ns, server)["spec"]["replicas"] == 4
    # The job's autoscaling changes reach the HPA; without it, the HPA goes.
    rewards = job(kube, ns, "quickstart")["spec"]["rewards"]
    rewards[0]["autoscaling"]["maxReplicas"] = 6
    kube.patch(*RJ, ns, "quickstart", {"spec": {"rewards": rewards}})
    wait_for(lambda: existing(kube, *HPA, ns, server)["spec"]["maxReplicas"] == 6,
             what="the HPA's new maximum")
    del rewards[0]["autoscaling"]
    kube.patch(*RJ, ns, "quickstart", {"spec": {"rewards": rewards}})
    wait_for(lambda: kube.get(*HPA, ns, server) is None, what="the HPA deleted")
    assert existing(kube, *RS, ns, server)["spec"]["replicas"] == 4


def test_a_changed_child_is_put_back(cluster: EmulatedCluster, kube: Kube) -> None:
    """A child edited behind the operator's back is restored at once (its watch wakes the
    parent), and only what the operator sets is compared (no PATCH while nothing differs)."""
    ns = "tampered"
    apply(cluster, ns, "quickstart-cpu.yaml")
    name = "quickstart-rewards"
    policy = wait_for(partial(kube.get, "networking.k8s.io/v1", "NetworkPolicy", ns, name),
                      what="the NetworkPolicy")
    kube.patch("networking.k8s.io/v1", "NetworkPolicy", ns, name,
               {"spec": {"ingress": [{"from": [{"podSelector": {}}]}]}})
    wait_for(lambda: existing(kube, "networking.k8s.io/v1", "NetworkPolicy", ns, name)[
        "spec"]["ingress"] == policy["spec"]["ingress"], what="the NetworkPolicy restored")


def test_a_finished_job_is_deleted_after_its_ttl(cluster: EmulatedCluster, kube: Kube) -> None:
    ns = "ttl"
    apply(cluster, ns, "quickstart-cpu.yaml",
          lambda doc: doc["spec"].update(runPolicy={"ttlSecondsAfterFinished": 1}))
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    wait_for(partial(kube.get, "batch/v1", "Job", ns, "quickstart-trainer-0"), what="trainer")
    run_trainer_pods(kube, ns, "quickstart-trainer-0")
    wait_phase(kube, ns, "quickstart", "Running")
    finish_job(kube, ns, "quickstart-trainer-0")
    wait_for(lambda: kube.get(*RJ, ns, "quickstart") is None, what="the job deleted")
    wait_for(lambda: any(e["reason"] == "Expired" for e in events(kube, ns)),
             what="an Expired Event")


def test_refused_child_writes_are_reported_in_children_ready(cluster: EmulatedCluster,
                                                             kube: Kube) -> None:
    """What the API server says when it refuses a child (a quota, a 422 naming the field)
    reaches the parent's status; once it accepts, the children appear and the condition
    clears."""
    ns = "refused"
    emulator = cluster.emulator
    assert emulator is not None
    try:
        emulator.refusals[("create", "deployments", ns)] = kmock.KubernetesError(
            status=403, reason="Forbidden", message='deployments.apps "dnsmos" is forbidden: '
            "exceeded quota: gpu, requested: requests.nvidia.com/gpu=1, limited: "
            "requests.nvidia.com/gpu=0")
        apply(cluster, ns, "rewardserver-shared.yaml")
        emulator.refusals[("create", c.SERVER_PLURAL, ns)] = kmock.KubernetesError(
            status=422, reason="Invalid", message='RewardServer "quickstart-intelligibility" is '
            "invalid: spec.replicas: Invalid value: 1: must be at most 0",
            details={"causes": [{"field": "spec.replicas", "reason": "FieldValueInvalid"}]})
        apply(cluster, ns, "quickstart-cpu.yaml")
        quota = wait_for(lambda: (r := condition(existing(kube, *RS, ns, "dnsmos").get(
            "status") or {}, "ChildrenReady")).get("status") == "False" and r,
            what="the server's ChildrenReady=False")
        assert quota["reason"] == "QuotaExceeded" and "exceeded quota: gpu" in quota["message"]
        st = wait_for(lambda: (s := status(kube, ns, "quickstart")) and condition(
            s, "ChildrenReady").get("reason") == "Invalid" and s, what="the job's reason")
        refused = condition(st, "ChildrenReady")
        assert "spec.replicas: Invalid value" in refused["message"]
        assert "fields: spec.replicas" in refused["message"]
        assert condition(st, c.COND_READY)["reason"] == "Invalid"
    finally:
        emulator.refusals.clear()
    wait_for(lambda: kube.get("apps/v1", "Deployment", ns, "dnsmos"), what="the Deployment")
    wait_for(lambda: condition(existing(kube, *RS, ns, "dnsmos").get("status") or {},
                               "ChildrenReady").get("status") == "True", what="cleared")
    for name in QUICKSTART_SERVERS:
        wait_for(partial(kube.get, *RS, ns, name), what=f"RewardServer {name}")
    wait_for(lambda: condition(status(kube, ns, "quickstart"), "ChildrenReady").get(
        "status") == "True", what="the job's ChildrenReady=True")


def test_suspend_stops_trainers_and_scales_rewards_to_zero(cluster: EmulatedCluster,
                                                            kube: Kube) -> None:
    ns = "suspend"
    apply(cluster, ns, "quickstart-cpu.yaml")
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"), what="trainer")
    run_trainer_pods(kube, ns, "quickstart-trainer-0")
    wait_phase(kube, ns, "quickstart", "Running")
    cluster.kubectl("patch", "-n", ns, "rlaifjob/quickstart", "--type=merge",
                    "-p", '{"spec": {"runPolicy": {"suspend": true}}}')
    st = wait_phase(kube, ns, "quickstart", "Suspended")
    assert condition(st, c.COND_SUSPENDED)["status"] == "True"
    wait_for(lambda: existing(kube, "batch/v1", "Job", ns, "quickstart-trainer-0")["spec"][
        "suspend"], what="trainer Job suspended")
    for name in QUICKSTART_SERVERS:
        wait_for(has_replicas(kube, ns, name, 0), what=f"{name} scaled to zero")
    cluster.kubectl("patch", "-n", ns, "rlaifjob/quickstart", "--type=merge",
                    "-p", '{"spec": {"runPolicy": {"suspend": false}}}')
    wait_for(lambda: existing(kube, "batch/v1", "Job", ns, "quickstart-trainer-0")["spec"][
        "suspend"] is False, what="trainer Job resumed")
    for name in QUICKSTART_SERVERS:
        wait_for(has_replicas(kube, ns, name, 1), what=f"{name} scaled back")
    st = wait_for(lambda: (s := status(kube, ns, "quickstart")).get("phase") in (
        "Starting", "Running") and s, what="resumed phase")
    assert condition(st, c.COND_SUSPENDED)["status"] == "False"


def test_delete_leaves_no_finalizer_behind(cluster: EmulatedCluster, kube: Kube) -> None:
    ns = "delete"
    apply(cluster, ns, "quickstart-cpu.yaml")
    wait_phase(kube, ns, "quickstart", "Starting")
    cluster.kubectl("delete", "-n", ns, "rlaifjob/quickstart", "--wait=false")
    wait_for(lambda: kube.get(*RJ, ns, "quickstart") is None, what="the job to be deleted")
    # Children go with Kubernetes' garbage collector, through their owner references.
    for name in QUICKSTART_SERVERS:
        assert owner_uid(kube.get(*RS, ns, name))


def test_no_finalizers_so_deletes_go_through_while_the_operator_is_down(
        cluster: EmulatedCluster, kube: Kube) -> None:
    ns = "operator-down"
    apply(cluster, ns, "quickstart-cpu.yaml")
    wait_phase(kube, ns, "quickstart", "Starting")
    assert not job(kube, ns, "quickstart")["metadata"].get("finalizers")
    for name in QUICKSTART_SERVERS:
        assert not existing(kube, *RS, ns, name)["metadata"].get("finalizers")
    cluster.stop_operator()
    try:
        # kubectl waits for the object to be gone; a finalizer nobody removes would hang it.
        cluster.kubectl("delete", "-n", ns, "rlaifjob/quickstart", "--timeout=20s")
        cluster.kubectl("delete", "-n", ns, f"rewardserver/{QUICKSTART_SERVERS[0]}",
                        "--timeout=20s")
        assert kube.get(*RJ, ns, "quickstart") is None
    finally:
        cluster.start_operator(cluster.workdir / "operator-restarted.log")


def test_invalid_spec_fails_naming_the_field(cluster: EmulatedCluster, kube: Kube) -> None:
    ns = "invalid"
    # The emulator does not enforce the CRD schema, so the operator's own check is what acts.
    apply(cluster, ns, "quickstart-cpu.yaml",
          lambda d: d["spec"]["rewards"][0].update(weight=-1))
    st = wait_phase(kube, ns, "quickstart", "Failed")
    failed = condition(st, c.COND_FAILED)
    assert failed["reason"] == "InvalidSpec"
    assert "spec.rewards[0].weight: must be greater than 0" in failed["message"]
    # Fixing the spec starts the job from the beginning.
    cluster.kubectl("patch", "-n", ns, "rlaifjob/quickstart", "--type=json", "-p",
                    '[{"op": "replace", "path": "/spec/rewards/0/weight", "value": 0.3}]')
    st = wait_phase(kube, ns, "quickstart", "Starting")
    assert condition(st, c.COND_FAILED).get("status") != "True"
    assert "completionTime" not in st


def test_immutable_field_change_is_refused_with_a_condition(cluster: EmulatedCluster,
                                                             kube: Kube) -> None:
    ns = "immutable"
    apply(cluster, ns, "quickstart-cpu.yaml")
    wait_phase(kube, ns, "quickstart", "Starting")
    wait_for(lambda: job(kube, ns, "quickstart")["metadata"]["annotations"].get(
        "rlaif.dev/accepted-immutable-spec"), what="accepted spec")
    cluster.kubectl("patch", "-n", ns, "rlaifjob/quickstart", "--type=merge",
                    "-p", '{"spec": {"policy": {"model": "/models/other"}}}')
    ready = wait_for(lambda: (r := condition(status(kube, ns, "quickstart"), c.COND_READY))
                     .get("reason") == "ImmutableFieldChanged" and r, what="refusal")
    assert ready["message"].startswith("spec.policy: cannot be changed")
    cm = existing(kube, "v1", "ConfigMap", ns, "quickstart-config")
    assert yaml.safe_load(cm["data"][c.CONFIG_FILE])["spec"]["policy"]["model"] == \
        "builtin:prosody-lm", "the running job keeps the model it started with"


def test_labeling_runs_first_then_training_starts(cluster: EmulatedCluster, kube: Kube) -> None:
    ns = "labeling"
    apply(cluster, ns, "grpo-rlaif-spa.yaml")
    st = wait_phase(kube, ns, "rlaif-spa", "Labeling")
    assert condition(st, c.COND_LABELED)["status"] == "False"
    lab = wait_for(lambda: kube.get("batch/v1", "Job", ns, "rlaif-spa-label"), what="label Job")
    box = lab["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "openai", "key": "api-key"}}} in box["env"]
    assert box["securityContext"]["runAsNonRoot"] is True
    assert kube.get(*RS, ns, "rlaif-spa-alignment") is None, "rewards wait for the labels"
    finish_job(kube, ns, "rlaif-spa-label")
    st = wait_phase(kube, ns, "rlaif-spa", "Starting")
    assert condition(st, c.COND_LABELED)["status"] == "True"
    wait_for(lambda: kube.get(*RS, ns, "rlaif-spa-alignment"), what="reward servers")


def test_failed_labeling_fails_the_job_with_the_reason(cluster: EmulatedCluster,
                                                       kube: Kube) -> None:
    ns = "labeling-failed"
    apply(cluster, ns, "grpo-rlaif-spa.yaml")
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "rlaif-spa-label"), what="label Job")
    kube.ensure({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "rlaif-spa-label-x", "namespace": ns,
        "labels": pod_labels(kube, ns, "rlaif-spa-label")},
        "spec": {"containers": [{"name": "labeler", "image": "x"}]},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "labeler", "state": {
            "terminated": {"exitCode": 2, "message": "rlaif label: OPENAI_API_KEY is not set"}
        }}]}})
    kube.patch("batch/v1", "Job", ns, "rlaif-spa-label", {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}, "status")
    st = wait_phase(kube, ns, "rlaif-spa", "Failed")
    failed = condition(st, c.COND_FAILED)
    assert failed["reason"] == "LabelingFailed"
    assert "OPENAI_API_KEY is not set" in failed["message"]


def test_pod_templates_reach_trainer_and_reward_pods(cluster: EmulatedCluster,
                                                      kube: Kube) -> None:
    ns = "overrides"
    gpu = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

    def edit(doc: dict[str, Any]) -> None:
        doc["spec"]["trainer"]["podTemplate"] = {"spec": {"tolerations": gpu, "containers": [
            {"name": "trainer", "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}]}}
        doc["spec"]["rewards"][0]["podTemplate"] = {
            "metadata": {"labels": {"team": "speech"}},
            "spec": {"nodeSelector": {"pool": "inference"}}}

    apply(cluster, ns, "quickstart-cpu.yaml", edit)
    dep = wait_for(lambda: kube.get("apps/v1", "Deployment", ns, QUICKSTART_SERVERS[0]),
                   what="reward Deployment")
    template = dep["spec"]["template"]
    assert template["spec"]["nodeSelector"] == {"pool": "inference"}
    assert template["metadata"]["labels"]["team"] == "speech"
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    trainer = wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"),
                       what="trainer Job")
    pod = trainer["spec"]["template"]["spec"]
    assert pod["tolerations"] == gpu
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in pod["containers"][0]["env"]


def test_finished_job_scales_its_reward_servers_to_zero(cluster: EmulatedCluster,
                                                        kube: Kube) -> None:
    ns = "release"
    apply(cluster, ns, "quickstart-cpu.yaml")
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"), what="trainer")
    run_trainer_pods(kube, ns, "quickstart-trainer-0")
    wait_phase(kube, ns, "quickstart", "Running")
    finish_job(kube, ns, "quickstart-trainer-0")
    wait_phase(kube, ns, "quickstart", "Succeeded")
    for name in QUICKSTART_SERVERS:
        wait_for(has_replicas(kube, ns, name, 0), what=f"{name} scaled to zero")
    released = wait_for(lambda: (r := condition(status(kube, ns, "quickstart"),
                                                c.COND_REWARDS_READY)).get(
        "reason") == "ScaledToZero" and r, what="ScaledToZero condition")
    assert "keepRewardServers" in released["message"]
    wait_for(lambda: any(e["reason"] == "ScaledToZero" for e in events(kube, ns)),
             what="a ScaledToZero Event")


def test_keep_reward_servers_keeps_them_through_suspend_and_the_end(cluster: EmulatedCluster,
                                                                     kube: Kube) -> None:
    ns = "keep"
    apply(cluster, ns, "quickstart-cpu.yaml",
          lambda d: d["spec"].update(runPolicy={"keepRewardServers": True, "suspend": True}))
    wait_phase(kube, ns, "quickstart", "Suspended")  # the same pass synced the servers
    assert all(existing(kube, *RS, ns, n)["spec"]["replicas"] == 1 for n in QUICKSTART_SERVERS)
    # The end-of-job release, run directly against the cluster: it leaves them alone.
    body = job(kube, ns, "quickstart")
    body["status"]["phase"] = "Succeeded"
    parsed, _ = admission.parse_job(body)
    assert parsed is not None
    outcome = reconcile.release_rewards(kube.session(), body, parsed, datetime.now(timezone.utc))
    assert outcome.events == []
    assert all(existing(kube, *RS, ns, n)["spec"]["replicas"] == 1 for n in QUICKSTART_SERVERS)


def test_foreign_object_with_a_childs_name_is_not_adopted(cluster: EmulatedCluster,
                                                          kube: Kube) -> None:
    ns = "foreign"
    foreign = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "quickstart-config", "namespace": ns},
               "data": {"owner": "someone else"}}
    kube.create(foreign)
    apply(cluster, ns, "quickstart-cpu.yaml")
    ready = wait_for(lambda: (r := condition(status(kube, ns, "quickstart"), c.COND_READY))
                     .get("reason") == "OwnershipConflict" and r, what="OwnershipConflict")
    assert f"ConfigMap {ns}/quickstart-config exists" in ready["message"]
    assert existing(kube, "v1", "ConfigMap", ns, "quickstart-config")["data"] == \
        {"owner": "someone else"}, "the operator must not touch it"
    assert "ownerReferences" not in existing(kube, "v1", "ConfigMap", ns,
                                             "quickstart-config")["metadata"]
    wait_for(lambda: any(e["reason"] == "OwnershipConflict" and e["type"] == "Warning"
                         for e in events(kube, ns)), what="a Warning Event")
    # Once the user removes it, the job carries on with its own.
    kube.delete("v1", "ConfigMap", ns, "quickstart-config")
    cm = wait_for(lambda: (m := kube.get("v1", "ConfigMap", ns, "quickstart-config")) and
                  m.get("metadata", {}).get("ownerReferences") and m, what="own ConfigMap")
    assert owner_uid(cm) == job(kube, ns, "quickstart")["metadata"]["uid"]


def _replicas(n: int, autoscale: bool = False) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["spec"]["replicas"] = n
        if autoscale:
            doc["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3}
    return edit


@pytest.mark.parametrize("api_version,kind,name,example,edit", [
    ("v1", "Service", "dnsmos", "rewardserver-shared.yaml", None),
    ("apps/v1", "Deployment", "dnsmos", "rewardserver-shared.yaml", None),
    ("policy/v1", "PodDisruptionBudget", "dnsmos", "rewardserver-shared.yaml", _replicas(2)),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "dnsmos", "rewardserver-shared.yaml",
     _replicas(1, autoscale=True)),
    ("networking.k8s.io/v1", "NetworkPolicy", "quickstart-rewards", "quickstart-cpu.yaml", None),
    (c.API_VERSION, c.SERVER_KIND, "quickstart-alignment", "quickstart-cpu.yaml", None),
    ("batch/v1", "Job", "quickstart-trainer-0", "quickstart-cpu.yaml", None),
], ids=lambda v: v if isinstance(v, str) and v[:1].isupper() else None)
def test_no_child_kind_is_adopted(cluster: EmulatedCluster, kube: Kube, api_version: str,
                                  kind: str, name: str, example: str, edit: Any) -> None:
    """Whatever the kind, an object in a child's place that the parent does not control stops
    its parent with OwnershipConflict and is left as it is."""
    ns = f"foreign-{kind.lower()}"
    kube.create({"apiVersion": api_version, "kind": kind,
                 "metadata": {"name": name, "namespace": ns, "labels": {"owner": "else"}}})
    doc = apply(cluster, ns, example, edit)
    parent = (c.API_VERSION, doc["kind"], doc["metadata"]["name"])
    if kind == "Job":
        make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    ready = wait_for(lambda: (r := condition(existing(kube, *parent[:2], ns, parent[2]).get(
        "status") or {}, c.COND_READY)).get("reason") == "OwnershipConflict" and r,
        what="OwnershipConflict")
    assert f"{kind} {ns}/{name} exists" in ready["message"]
    assert "ownerReferences" not in existing(kube, api_version, kind, ns, name)["metadata"]


def disrupt_trainer(kube: Kube, ns: str, job_name: str) -> None:
    """Play the scheduler preempting rank 0: DisruptionTarget, then SIGTERM's exit 143."""
    kube.patch("v1", "Pod", ns, f"{job_name}-0", {"status": {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
         "message": "Preempted in order to admit critical pod"}],
        "containerStatuses": [{"name": "trainer", "ready": False, "state": {
            "terminated": {"exitCode": 143, "reason": "Error"}}}]}}, "status")
    kube.patch("batch/v1", "Job", ns, job_name, {"status": {"active": 0, "failed": 1,
               "conditions": [{"type": "Failed", "status": "True",
                               "reason": "PodFailurePolicy"}]}}, "status")


def test_disruption_restarts_free_and_exit_2_fails_at_once(cluster: EmulatedCluster,
                                                           kube: Kube) -> None:
    ns = "failure-policy"
    running_without_retries(cluster, kube, ns)
    disrupt_trainer(kube, ns, "quickstart-trainer-0")
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-1"), what="attempt 1")
    st = status(kube, ns, "quickstart")
    assert st["restarts"] == 0 and st["disruptions"] == 1, "a preemption is not a failure"
    wait_for(lambda: any(e["reason"] == "GangRestart" and "PreemptionByScheduler" in e["message"]
                         and "not counted" in e["message"] for e in events(kube, ns)),
             what="a GangRestart Event naming the preemption")
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0") is None,
             what="the preempted gang to be deleted")
    run_trainer_pods(kube, ns, "quickstart-trainer-1")
    wait_phase(kube, ns, "quickstart", "Running")
    kube.patch("v1", "Pod", ns, "quickstart-trainer-1-0", {"status": {
        "phase": "Failed", "containerStatuses": [{"name": "trainer", "ready": False, "state": {
            "terminated": {"exitCode": 2, "message": "trainer.yaml: spec.steps: must be at "
                                                     "least 1"}}}]}}, "status")
    kube.patch("batch/v1", "Job", ns, "quickstart-trainer-1", {"status": {
        "active": 0, "failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}, "status")
    st = wait_phase(kube, ns, "quickstart", "Failed")
    failed = condition(st, c.COND_FAILED)
    assert failed["reason"] == "InvalidConfig" and "spec.steps" in failed["message"]
    assert kube.get("batch/v1", "Job", ns, "quickstart-trainer-2") is None


def test_kueue_queues_admits_and_suspends_through_job_deletion(cluster: EmulatedCluster,
                                                                kube: Kube) -> None:
    ns = "kueue"
    queue = "kueue.x-k8s.io/queue-name"
    apply(cluster, ns, "quickstart-cpu.yaml",
          lambda d: d["metadata"].update(labels={queue: "gpu"}))
    dep = wait_for(lambda: kube.get("apps/v1", "Deployment", ns, QUICKSTART_SERVERS[0]),
                   what="reward Deployment")
    assert dep["metadata"]["labels"][queue] == "gpu", "reward pods go through the queue too"
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    trainer = wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"),
                       what="trainer Job")
    assert trainer["spec"]["suspend"] is True and trainer["metadata"]["labels"][queue] == "gpu"
    st = wait_phase(kube, ns, "quickstart", "Queued")
    assert condition(st, c.COND_READY)["reason"] == "Queued"
    # Kueue admits the Workload by unsuspending the Job; the operator never does.
    kube.patch("batch/v1", "Job", ns, "quickstart-trainer-0", {"spec": {"suspend": False}})
    run_trainer_pods(kube, ns, "quickstart-trainer-0")
    wait_phase(kube, ns, "quickstart", "Running")
    # Suspending a queued job deletes the gang (Kueue would unsuspend a suspended Job) ...
    cluster.kubectl("patch", "-n", ns, "rlaifjob/quickstart", "--type=merge",
                    "-p", '{"spec": {"runPolicy": {"suspend": true}}}')
    wait_phase(kube, ns, "quickstart", "Suspended")
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0") is None,
             what="the gang to be deleted")
    # ... and resuming queues a new attempt, suspended, for Kueue to admit.
    cluster.kubectl("patch", "-n", ns, "rlaifjob/quickstart", "--type=merge",
                    "-p", '{"spec": {"runPolicy": {"suspend": false}}}')
    again = wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-1"),
                     what="a new queued attempt")
    assert again["spec"]["suspend"] is True
    st = wait_phase(kube, ns, "quickstart", "Queued")
    assert st["restarts"] == 0


def lease_holder(kube: Kube) -> str:
    lease = kube.get("coordination.k8s.io/v1", "Lease", "default", "rlaif-operator") or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def test_a_second_replica_stands_by_until_the_leader_stops(cluster: EmulatedCluster,
                                                            kube: Kube) -> None:
    ns = "leader"
    first = wait_for(lambda: lease_holder(kube), what="a leader")
    leader_process = cluster.operator
    assert leader_process is not None
    standby_log = cluster.workdir / "operator-standby.log"
    cluster.start_operator(standby_log)  # now cluster.operator is the standby
    try:
        wait_for(lambda: "does not hold the lease" in standby_log.read_text(),
                 what="the standby to see the lease taken")
        apply(cluster, ns, "quickstart-cpu.yaml")
        wait_phase(kube, ns, "quickstart", "Starting")
        assert lease_holder(kube) == first, "the standby must not take over a live lease"
    finally:
        leader_process.terminate()  # SIGTERM: kopf's cleanup releases the lease
        leader_process.wait(30)
    second = wait_for(lambda: (h := lease_holder(kube)) and h != first and h,
                      what="the standby to take the lease")
    assert second
    make_servers_ready(kube, ns, QUICKSTART_SERVERS)
    wait_for(lambda: kube.get("batch/v1", "Job", ns, "quickstart-trainer-0"),
             what="the new leader to carry on")


def test_kubectl_get_shows_the_jobs(cluster: EmulatedCluster) -> None:
    out = cluster.kubectl("get", "rlaifjobs", "-A", "-o", "name")
    assert "rlaifjob.rlaif.dev/quickstart" in out.stdout


def test_gang_scheduled_jobs_get_their_pod_group(cluster: EmulatedCluster, kube: Kube) -> None:
    for ns, scheduler, api_version in (("gang-volcano", "volcano", "scheduling.volcano.sh/v1beta1"),
                                       ("gang-cosched", "coscheduling",
                                        "scheduling.x-k8s.io/v1alpha1")):
        apply(cluster, ns, "quickstart-cpu.yaml",
              lambda doc, s=scheduler: doc["spec"].setdefault("runPolicy", {}).update(
                  gangScheduling=s))
        wait_phase(kube, ns, "quickstart", "Starting")
        make_servers_ready(kube, ns, QUICKSTART_SERVERS)
        group = wait_for(partial(kube.get, api_version, "PodGroup", ns, "quickstart-trainer"),
                         what=f"the {scheduler} PodGroup")
        assert owner_uid(group) == job(kube, ns, "quickstart")["metadata"]["uid"]


# --------------------------------------------------------------------------- RBAC replay
# Rendered as the release "rlaif-operator" in "default": the Lease the emulator's operator
# holds (default/rlaif-operator) is then the one the chart's leader Role names.
RBAC_RELEASE = ("template", "rlaif-operator", str(REPO / "charts" / "rlaif-operator"),
                "--namespace", "default")
ACCOUNT = ("rlaif-operator", "default")


def rendered(*values: str) -> list[dict[str, Any]]:
    from tests.integration.test_helm import helm

    return [d for d in yaml.safe_load_all(helm(*RBAC_RELEASE, *values).stdout) if d]


def test_rbac_replay_cluster_wide_install(cluster: EmulatedCluster) -> None:
    """Every API call the real operator made in this module (recorded by the emulator, plus
    the finalizers update strict clusters check for blockOwnerDeletion) is allowed by the
    rendered ClusterRole and leader Role, and every permission they grant was needed."""
    assert cluster.emulator is not None
    calls = cluster.emulator.operator_calls
    granted = rbac.grants(rendered(), *ACCOUNT)
    assert {g.role for g in granted} == {"ClusterRole rlaif-operator",
                                         "Role rlaif-operator-leader"}
    assert not (denied := rbac.denied(calls, granted)), "forbidden:\n" + "\n".join(
        map(str, denied))
    assert not (unused := rbac.unused(calls, granted)), "never used:\n" + "\n".join(
        map(str, unused))


def test_rbac_replay_namespaced_install(tmp_path: Any) -> None:
    """The operator watching one namespace (as the chart runs it with watchNamespaces) makes
    only calls the Roles allow: nothing cluster-wide, nothing outside its namespaces."""
    ns = "team-a"
    with EmulatedCluster(tmp_path) as cl:
        cl.kubectl("apply", "--validate=false", "-f", str(REPO / "manifests" / "crds"))
        cl.start_operator(tmp_path / "operator.log", namespaces=[ns],
                          RLAIF_CLUSTER_SCANNING="false")
        try:
            kube = cl.client()
            apply(cl, ns, "quickstart-cpu.yaml", lambda doc: doc["spec"]["rewards"][0].update(
                autoscaling={"minReplicas": 1, "maxReplicas": 2}))
            wait_phase(kube, ns, "quickstart", "Starting")
            make_servers_ready(kube, ns, QUICKSTART_SERVERS)
            wait_for(partial(kube.get, "batch/v1", "Job", ns, "quickstart-trainer-0"),
                     what="the trainer Job")
            wait_for(partial(kube.get, "autoscaling/v2", "HorizontalPodAutoscaler", ns,
                             "quickstart-intelligibility"), what="the HPA")
        finally:
            cl.stop_operator()
        assert cl.emulator is not None
        calls = cl.emulator.operator_calls
    granted = rbac.grants(rendered("--set", f"watchNamespaces={{{ns}}}"), *ACCOUNT)
    assert {g.role for g in granted} == {"Role rlaif-operator", "Role rlaif-operator-leader"}
    assert all(g.namespace is not None for g in granted), "no cluster-wide rights"
    assert {call.namespace for call in calls} == {ns, "default"}
    # The check can fail: a cluster-wide list, another namespace, another release's Lease.
    assert len(rbac.denied({Call("list", "", "pods", "", "", ""),
                            Call("list", "", "pods", "", "team-b", ""),
                            Call("patch", "coordination.k8s.io", "leases", "", "default",
                                 "other-release")}, granted)) == 3
    assert not (denied := rbac.denied(calls, granted)), "forbidden:\n" + "\n".join(
        map(str, denied))
