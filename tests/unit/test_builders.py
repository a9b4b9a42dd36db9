"""Builders: every child of every example validates against the official Kubernetes schemas,
every pod template passes the restricted Pod Security Standard, and the wiring is right."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rlaif import constants as c
from rlaif.api.models import RewardServer, RLAIFJob
from rlaif.config import TrainerConfig
from rlaif.operator import job_builders as jb
from rlaif.operator import meta
from rlaif.operator import server_builders as sb
from rlaif.operator.settings import OperatorConfig
from tests.conftest import EXAMPLES

K8S_VERSION = "1.35"
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}


def _docs() -> list[dict[str, Any]]:
    return [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]


def _with_server_metadata(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["metadata"].update(namespace="ml", uid="0f6e0c2a-1111-2222-3333-444455556666")
    return doc


JOBS = [RLAIFJob.model_validate(_with_server_metadata(d)) for d in _docs()
        if d["kind"] == c.JOB_KIND]
SERVERS = [RewardServer.model_validate(_with_server_metadata(d)) for d in _docs()
           if d["kind"] == c.SERVER_KIND]


def _server_children(server: RewardServer) -> list[dict[str, Any]]:
    return [x for x in (sb.build_deployment(server), sb.build_service(server),
                        sb.build_pdb(server), sb.build_label_config(server)) if x is not None]


def _all_children() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for job in JOBS:
        out += [(job.metadata.name, x) for x in jb.build_children(job, attempt=2)]
        for body in jb.build_reward_servers(job):
            server = RewardServer.model_validate(body)
            out += [(server.metadata.name, x) for x in _server_children(server)]
    for server in SERVERS:
        out += [(server.metadata.name, x) for x in _server_children(server)]
    return out


CHILDREN = _all_children()
BUILTIN = [(owner, x) for owner, x in CHILDREN if x["kind"] != c.SERVER_KIND]


def _pod_templates() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{x['kind']}/{x['metadata']['name']}", x["spec"]["template"]["spec"])
            for _, x in CHILDREN if x["kind"] in ("Job", "Deployment")]


@pytest.mark.parametrize("child", [x for _, x in BUILTIN],
                         ids=[f"{x['kind']}-{x['metadata']['name']}" for _, x in BUILTIN])
def test_child_passes_kubernetes_schema(child: dict[str, Any]) -> None:
    kubernetes_validate.validate(child, K8S_VERSION, strict=True)


def test_every_example_kind_produces_children() -> None:
    kinds = {x["kind"] for _, x in CHILDREN}
    assert {"ConfigMap", "Service", "Job", "NetworkPolicy", "RewardServer", "Deployment",
            "PodDisruptionBudget"} <= kinds


@pytest.mark.parametrize("where,pod", _pod_templates(), ids=[w for w, _ in _pod_templates()])
def test_pod_template_is_restricted_pss(where: str, pod: dict[str, Any]) -> None:
    assert_restricted(where, pod)
    for box in pod["containers"] + pod.get("initContainers", []):
        assert {"name": meta.SCRATCH_VOLUME, "mountPath": c.SCRATCH_DIR} in box["volumeMounts"]
        assert "limits" in box["resources"] or "requests" in box["resources"] or \
            box["name"] in ("trainer", "server"), f"{where}/{box['name']} has no resources"


def assert_restricted(where: str, pod: dict[str, Any]) -> None:
    """Each rule of the "restricted" Pod Security Standard, on one pod spec."""
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, where
    assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for volume in pod["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUME_TYPES, f"{where}: volume {volume['name']} is {kinds}"
    for box in pod["containers"] + pod.get("initContainers", []):
        sc = box["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, f"{where}/{box['name']}"
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc["readOnlyRootFilesystem"] is True and sc.get("privileged") is not True
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0
        assert not any(p.get("hostPort") for p in box.get("ports", []))
        mounted = {m["name"] for m in box["volumeMounts"]}
        assert mounted <= {v["name"] for v in pod["volumes"]}, f"{where}: unknown volume"


@pytest.mark.parametrize("owner,child", CHILDREN,
                         ids=[f"{x['kind']}-{x['metadata']['name']}" for _, x in CHILDREN])
def test_children_carry_standard_labels(owner: str, child: dict[str, Any]) -> None:
    lbls = child["metadata"]["labels"]
    assert lbls[c.LABEL_PART_OF] == c.PART_OF and lbls[c.LABEL_MANAGED_BY] == c.PART_OF
    assert lbls[c.LABEL_INSTANCE] == owner and c.LABEL_COMPONENT in lbls
    assert child["metadata"]["namespace"] == "ml"


def test_owner_reference_points_at_parent() -> None:
    job = JOBS[0].model_dump(by_alias=True, mode="json")
    child = meta.owned(jb.build_config_map(JOBS[0]), job)
    (ref,) = child["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": c.API_VERSION, "kind": c.JOB_KIND, "name": JOBS[0].metadata.name,
                   "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _job(name: str) -> RLAIFJob:
    return next(j for j in JOBS if j.metadata.name == name)


def test_trainer_config_wires_reward_services() -> None:
    job = _job("llasa-grpo")
    cm = jb.build_config_map(job)
    cfg = TrainerConfig.model_validate(yaml.safe_load(cm["data"][c.CONFIG_FILE]))
    urls = {r.name: r.url for r in cfg.rewards}
    assert urls == {"intelligibility": "http://llasa-grpo-intelligibility.ml.svc:8080",
                    "naturalness": "http://dnsmos.ml.svc:8080",
                    "similarity": "http://llasa-grpo-similarity.ml.svc:8080"}
    assert cfg.checkpoint_dir == c.CHECKPOINT_DIR and cfg.output_dir.startswith(c.CHECKPOINT_DIR)
    assert cfg.spec == job.spec and cfg.metrics_port == job.spec.trainer.metrics_port
    servers = {s["metadata"]["name"] for s in jb.build_reward_servers(job)}
    assert servers == {"llasa-grpo-intelligibility", "llasa-grpo-similarity"}


def test_the_rendered_config_follows_every_change_of_the_job() -> None:
    """The operator renders a job's config files once per version of the job (the YAML
    costs more than the rest of a reconciliation): a change must never get the old files."""
    job = _job("llasa-grpo")
    first = jb.build_config_map(job)["data"]
    assert jb.build_config_map(job.model_copy(deep=True))["data"] == first
    reweighted = job.model_copy(deep=True)
    reweighted.spec.rewards[0].weight += 0.25
    cfg = TrainerConfig.model_validate(
        yaml.safe_load(jb.build_config_map(reweighted)["data"][c.CONFIG_FILE]))
    assert cfg.spec.rewards[0].weight == job.spec.rewards[0].weight + 0.25
    assert jb.build_config_map(job)["data"] == first


def test_trainer_job_is_an_indexed_gang_with_rendezvous_env() -> None:
    job = _job("llasa-grpo")
    body = jb.build_trainer_job(job, attempt=1, deadline_seconds=60)
    spec, pod = body["spec"], body["spec"]["template"]["spec"]
    assert body["metadata"]["name"] == "llasa-grpo-trainer-1"
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 60
    assert pod["subdomain"] == jb.trainer_service_name(job) == "llasa-grpo-trainer"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "llasa-grpo-trainer-1-0.llasa-grpo-trainer.ml.svc"
    assert env["MASTER_PORT"] == str(c.RENDEZVOUS_PORT)
    box = pod["containers"][0]
    assert box["command"] == ["rlaif"]
    assert box["args"] == ["train", "--config", f"{c.CONFIG_DIR}/{c.CONFIG_FILE}"]
    assert "job-completion-index" in env["NODE_RANK"]["fieldRef"]["fieldPath"]
    assert pod["initContainers"][0]["env"] == [*pod["containers"][0]["env"], {
        "name": jb.WAIT_ENV, "value": str(jb.DEFAULT_WAIT_SECONDS)}]
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 4}}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[c.CHECKPOINT_DIR] == c.CHECKPOINT_VOLUME and mounts["/models"] == "models"
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
    assert claims[c.CHECKPOINT_VOLUME] == {"claimName": "llasa-grpo-checkpoints"}
    service = jb.build_trainer_service(job)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"].items() <= body["spec"]["template"]["metadata"][
        "labels"].items()


def test_kueue_queue_label_and_scheduler_pass_through() -> None:
    doc = _with_server_metadata(_docs()[0])
    doc["metadata"]["labels"] = {meta.KUEUE_QUEUE_LABEL: "gpu-queue"}
    doc["spec"].setdefault("runPolicy", {})["schedulerName"] = "volcano"
    body = jb.build_trainer_job(RLAIFJob.model_validate(doc), 0, suspend=True)
    assert body["metadata"]["labels"][meta.KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert body["spec"]["suspend"] is True
    assert body["spec"]["template"]["spec"]["schedulerName"] == "volcano"


def test_network_policy_admits_only_this_jobs_trainers() -> None:
    job = _job("rlaif-spa")
    policy = jb.build_network_policy(job)["spec"]
    trainer_pod = jb.build_trainer_job(job, 0)["spec"]["template"]["metadata"]["labels"]
    server = RewardServer.model_validate(jb.build_reward_servers(job)[0])
    reward_pod = sb.build_deployment(server)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= reward_pod.items()
    (rule,) = policy["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= trainer_pod.items()
    other = jb.build_trainer_job(_job("llasa-grpo"), 0)["spec"]["template"]["metadata"]["labels"]
    assert not rule["from"][0]["podSelector"]["matchLabels"].items() <= other.items()
    assert rule["ports"] == [{"protocol": "TCP", "port": c.REWARD_PORT}]


def test_network_policy_lets_the_named_prometheus_scrape_reward_servers() -> None:
    """Only the configured namespace's Prometheus pods, only the reward port (/metrics)."""
    cfg = OperatorConfig.from_env({"RLAIF_PROMETHEUS_NAMESPACE": "monitoring",
                                   "RLAIF_PROMETHEUS_POD_LABELS": "app=prometheus, team=ml"})
    trainers, scrape = jb.build_network_policy(_job("rlaif-spa"), cfg.scraper())["spec"][
        "ingress"]
    assert scrape == {"from": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app": "prometheus", "team": "ml"}}}],
        "ports": trainers["ports"]}
    assert OperatorConfig().scraper() is None
    with pytest.raises(ValueError, match="RLAIF_PROMETHEUS_POD_LABELS: 'app' is not key=value"):
        OperatorConfig(prometheus_namespace="m", prometheus_pod_labels="app").scraper()


def test_reward_server_deployment_probes_and_args() -> None:
    server = SERVERS[0]
    dep = sb.build_deployment(server)
    box = dep["spec"]["template"]["spec"]["containers"][0]
    assert box["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert box["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert box["args"] == ["reward", "serve", "--kind", "mos", "--model", "builtin:dnsmos",
                           "--port", "8080", "--max-batch", "32", "--max-wait-ms", "10"]
    assert dep["spec"]["replicas"] == 2 and sb.build_deployment(server, 0)["spec"]["replicas"] == 0
    pdb = sb.build_pdb(server)
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    single = server.model_copy(update={"spec": server.spec.model_copy(update={"replicas": 1})})
    assert sb.build_pdb(single) is None
    svc = sb.build_service(server)
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    # headless: the name resolves to each ready pod, so the reward client balances requests
    assert svc["spec"]["clusterIP"] == "None" and not svc["spec"].get("publishNotReadyAddresses")
    assert sb.selector_string(server) == "app.kubernetes.io/instance=dnsmos," \
                                         "app.kubernetes.io/component=reward-server"


def test_judge_server_gets_the_jobs_label_schema() -> None:
    doc = _with_server_metadata(next(d for d in _docs() if d["metadata"]["name"] == "rlaif-spa"))
    doc["spec"]["labelSchema"] = {"emotion": ["Calm", "Angry"]}
    job = RLAIFJob.model_validate(doc)
    judge = RewardServer.model_validate(
        next(s for s in jb.build_reward_servers(job) if s["spec"]["kind"] == "judge"))
    label_config = sb.build_label_config(judge)
    assert label_config is not None
    schema = yaml.safe_load(label_config["data"][sb.LABELS_FILE])
    assert schema["emotion"] == ["Calm", "Angry"]
    args = sb.build_deployment(judge)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--label-schema", f"{c.CONFIG_DIR}/{sb.LABELS_FILE}"]


def test_labeling_job_reads_the_api_key_from_the_secret() -> None:
    job = _job("rlaif-spa")
    body = jb.build_labeling_job(job)
    assert body is not None
    box = body["spec"]["template"]["spec"]["containers"][0]
    assert box["args"][:4] == ["label", "--in", "/data/librispeech-test-clean.txt", "--out"]
    assert box["args"][4] == job.spec.data.prompts
    assert "--endpoint" in box["args"] and "gpt-4o" in box["args"]
    (key,) = [e for e in box["env"] if e["name"] == jb.API_KEY_ENV]
    assert key == {"name": jb.API_KEY_ENV,
                   "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}}}
    assert not any("api-key" in a for a in box["args"] if a != "--api-key-env")
    assert jb.build_labeling_job(_job("llasa-grpo")) is None


def test_labeling_without_input_names_the_field() -> None:
    doc = _with_server_metadata(next(d for d in _docs() if d["metadata"]["name"] == "rlaif-spa"))
    del doc["spec"]["labeling"]["input"]
    with pytest.raises(ValueError, match=r"spec\.labeling\.input"):
        jb.build_labeling_job(RLAIFJob.model_validate(doc))


def test_long_names_stay_within_dns_limits() -> None:
    doc = _with_server_metadata(_docs()[0])
    doc["metadata"]["name"] = "a" * 63
    job = RLAIFJob.model_validate(doc)
    name = jb.trainer_job_name(job, 12)
    assert len(name) <= 56 and name.endswith("-trainer-12")
    assert name != jb.trainer_job_name(job.model_copy(update={"metadata": job.metadata.model_copy(
        update={"name": "a" * 62 + "b"})}), 12)
    for child in jb.build_children(job):
        assert len(child["metadata"]["name"]) <= 63


def test_reward_pods_mount_only_their_models_volume_read_only() -> None:
    job = _job("rlaif-spa")  # volumes: models (ro claim), data (rw claim), checkpoints
    for body in jb.build_reward_servers(job):
        spec = body["spec"]
        assert [v["name"] for v in spec["volumes"]] == ["models"]
        assert spec["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
        assert spec["volumeMounts"] == [{"name": "models", "mountPath": "/models",
                                         "readOnly": True}]
    builtin = [b for b in jb.build_reward_servers(_job("quickstart"))]
    assert builtin and all(b["spec"].get("volumes", []) == [] for b in builtin)


def test_multi_node_job_without_a_shared_checkpoint_volume_is_refused() -> None:
    doc = _with_server_metadata(next(d for d in _docs() if d["metadata"]["name"] == "llasa-grpo"))
    doc["spec"]["volumes"] = [v for v in doc["spec"]["volumes"] if v["name"] != "checkpoints"]
    with pytest.raises(ValueError, match=r"spec\.volumes: trainer\.nodes is 2, so a volume "
                                         r"named 'checkpoints'"):
        RLAIFJob.model_validate(doc)
    doc["spec"]["volumes"].append({"name": "checkpoints", "emptyDir": {}})
    with pytest.raises(ValueError, match="shared by every node"):
        RLAIFJob.model_validate(doc)


@pytest.mark.parametrize("name", ["1job", "my.job", "a" * 64])
def test_names_that_cannot_name_a_service_are_refused(name: str) -> None:
    doc = _with_server_metadata(_docs()[0])
    doc["metadata"]["name"] = name
    with pytest.raises(ValueError, match=r"metadata\.name"):
        RLAIFJob.model_validate(doc)


@pytest.mark.parametrize("kind,group,key", [
    ("volcano", "scheduling.volcano.sh/v1beta1", "annotations"),
    ("coscheduling", "scheduling.x-k8s.io/v1alpha1", "labels")])
def test_gang_scheduling_makes_a_pod_group_the_pods_join(kind: str, group: str,
                                                         key: str) -> None:
    doc = _with_server_metadata(next(d for d in _docs() if d["metadata"]["name"] == "llasa-grpo"))
    doc["spec"].setdefault("runPolicy", {})["gangScheduling"] = kind
    job = RLAIFJob.model_validate(doc)
    group_body = jb.build_pod_group(job)
    assert group_body is not None and group_body["apiVersion"] == group
    assert group_body["spec"] == {"minMember": 2}
    template = jb.build_trainer_job(job, 0, wait_seconds=3600)["spec"]["template"]
    assert group_body["metadata"]["name"] in template["metadata"][key].values()
    assert (template["spec"].get("schedulerName") == "volcano") == (kind == "volcano")
    wait = template["spec"]["initContainers"][0]
    assert {"name": jb.WAIT_ENV, "value": "3600"} in wait["env"]
    assert jb.build_pod_group(_job("llasa-grpo")) is None


def test_kueue_queue_label_reaches_the_reward_deployments() -> None:
    doc = _with_server_metadata(next(d for d in _docs() if d["metadata"]["name"] == "rlaif-spa"))
    doc["metadata"]["labels"] = {meta.KUEUE_QUEUE_LABEL: "gpu-queue"}
    for body in jb.build_reward_servers(RLAIFJob.model_validate(doc)):
        dep = sb.build_deployment(RewardServer.model_validate(body))
        assert dep["metadata"]["labels"][meta.KUEUE_QUEUE_LABEL] == "gpu-queue"
        assert meta.KUEUE_QUEUE_LABEL not in dep["spec"]["selector"]["matchLabels"]
