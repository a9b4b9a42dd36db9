"""podTemplate overrides: merged over the built pods of trainers, reward servers and the
labeller; the result still passes the Kubernetes schema and the restricted Pod Security
Standard, and an override that would break it is refused with its field path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from rlaif.api.models import PodTemplate, RewardServer, RLAIFJob
from rlaif.api.podsecurity import restricted_violations
from rlaif.api.validation import InvalidManifest, parse_object
from rlaif.operator import job_builders as jb
from rlaif.operator import meta
from rlaif.operator import server_builders as sb
from tests.conftest import EXAMPLES
from tests.unit.test_builders import K8S_VERSION, assert_restricted

SPA = yaml.safe_load((EXAMPLES / "grpo-rlaif-spa.yaml").read_text())
GPU_POOL: dict[str, Any] = {
    "metadata": {"labels": {"volcano.sh/queue-name": "research",
                            "app.kubernetes.io/component": "hijack"},
                 "annotations": {"k8s.v1.cni.cncf.io/networks": "rdma-net"}},
    "spec": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "training-high",
        "runtimeClassName": "nvidia",
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "trainer",
        "securityContext": {"fsGroup": 2000},
        "volumes": [{"name": "hf-cache", "emptyDir": {"sizeLimit": "50Gi"}}],
    },
}


def _job(pod_templates: dict[str, Any]) -> RLAIFJob:
    doc = copy.deepcopy(SPA)
    doc["metadata"].update(namespace="ml", uid="0f6e0c2a-1111-2222-3333-444455556666")
    for where, box in pod_templates.items():
        target = doc["spec"]["rewards"][0] if where == "server" else doc["spec"][
            "labeling" if where == "labeler" else "trainer"]
        target["podTemplate"] = {**copy.deepcopy(GPU_POOL), "spec": {
            **copy.deepcopy(GPU_POOL["spec"]), "containers": [box]}}
    return RLAIFJob.model_validate(doc)


NCCL = {"name": "trainer", "env": [{"name": "NCCL_IB_HCA", "value": "mlx5"},
                                   {"name": "HOME", "value": "/tmp/home"}],
        "envFrom": [{"secretRef": {"name": "hf-token"}}],
        "volumeMounts": [{"name": "hf-cache", "mountPath": "/tmp/.cache/huggingface"}]}


def _pods(job: RLAIFJob) -> dict[str, dict[str, Any]]:
    """The pod templates of the trainer Job, the first reward's Deployment and the labeller."""
    server = RewardServer.model_validate(jb.build_reward_servers(job)[0])
    labeling = jb.build_labeling_job(job)
    assert labeling is not None
    return {"trainer": jb.build_trainer_job(job, 0)["spec"]["template"],
            "server": sb.build_deployment(server)["spec"]["template"],
            "labeler": labeling["spec"]["template"]}


def test_overrides_reach_every_pod_kind_and_keep_security() -> None:
    job = _job({"trainer": NCCL, "server": {"name": "server", "env": [
        {"name": "HF_HUB_OFFLINE", "value": "1"}]}, "labeler": {"name": "labeler"}})
    for name, template in _pods(job).items():
        pod, lbls = template["spec"], template["metadata"]["labels"]
        assert lbls["volcano.sh/queue-name"] == "research"
        assert lbls["app.kubernetes.io/component"] != "hijack", "the operator's labels win"
        assert template["metadata"]["annotations"] == GPU_POOL["metadata"]["annotations"]
        for key in ("tolerations", "imagePullSecrets"):
            assert pod[key] == GPU_POOL["spec"][key], name
        for key in ("nodeSelector", "priorityClassName", "runtimeClassName",
                    "serviceAccountName"):
            assert pod[key] == GPU_POOL["spec"][key], name
        # Merged field by field: the restricted settings survive next to the new fsGroup.
        assert pod["securityContext"]["fsGroup"] == 2000
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {"name": "hf-cache", "emptyDir": {"sizeLimit": "50Gi"}} in pod["volumes"]
        assert_restricted(name, pod)
        assert restricted_violations(pod) == []
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "x", **template["metadata"]}, "spec": pod}, K8S_VERSION, strict=True)


def test_container_env_merges_by_name_and_the_image_survives() -> None:
    built = jb.build_trainer_job(_job({}), 0)["spec"]["template"]["spec"]
    pod = jb.build_trainer_job(_job({"trainer": NCCL}), 0)["spec"]["template"]["spec"]
    box, before = pod["containers"][0], built["containers"][0]
    env = {e["name"]: e.get("value") for e in box["env"]}
    assert env["NCCL_IB_HCA"] == "mlx5" and env["HOME"] == "/tmp/home"
    assert [e["name"] for e in box["env"]].count("HOME") == 1
    assert {"MASTER_ADDR", "NODE_RANK"} <= env.keys()
    assert box["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert box["image"] == before["image"] and box["args"] == before["args"]
    assert box["securityContext"] == before["securityContext"]
    assert pod["initContainers"] == built["initContainers"], "init containers stay the operator's"
    assert {"name": "hf-cache", "mountPath": "/tmp/.cache/huggingface"} in box["volumeMounts"]


def test_scheduler_name_in_the_override_beats_the_run_policy() -> None:
    doc = copy.deepcopy(SPA)
    doc["spec"]["runPolicy"]["schedulerName"] = "volcano"
    doc["spec"]["trainer"]["podTemplate"] = {"spec": {"schedulerName": "kai-scheduler"}}
    pod = jb.build_trainer_job(RLAIFJob.model_validate(doc), 0)["spec"]["template"]["spec"]
    assert pod["schedulerName"] == "kai-scheduler"


def test_reward_server_resource_takes_a_pod_template() -> None:
    doc = yaml.safe_load((EXAMPLES / "rewardserver-shared.yaml").read_text())
    doc["spec"]["podTemplate"] = {"spec": {"tolerations": GPU_POOL["spec"]["tolerations"]}}
    plain = sb.build_deployment(RewardServer.model_validate(
        yaml.safe_load((EXAMPLES / "rewardserver-shared.yaml").read_text())))
    dep = sb.build_deployment(RewardServer.model_validate(doc))
    assert dep["spec"]["template"]["spec"]["tolerations"] == GPU_POOL["spec"]["tolerations"]
    key = meta.TEMPLATE_HASH_ANNOTATION
    assert dep["metadata"]["annotations"][key] != plain["metadata"]["annotations"][key], \
        "a changed template must be seen as drift"


@pytest.mark.parametrize("override,fragment", [
    ({"spec": {"containers": [{"name": "trainer", "securityContext": {"privileged": True}}]}},
     "spec.containers[0].securityContext.privileged: must not be true"),
    ({"spec": {"containers": [{"name": "trainer", "securityContext": {
        "capabilities": {"add": ["SYS_ADMIN"]}}}]}}, "capabilities.add: ['SYS_ADMIN']"),
    ({"spec": {"securityContext": {"runAsUser": 0}}}, "spec.securityContext.runAsUser"),
    ({"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}},
     "'Unconfined' is not allowed"),
    ({"spec": {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}},
     "volume type ['hostPath'] is not allowed"),
    ({"spec": {"containers": [{"name": "server"}]}}, "no container named 'server'"),
    ({"spec": {"hostNetwork": True}}, "spec.hostNetwork: unknown field"),
])
def test_unsafe_override_is_refused_naming_the_field(override: dict[str, Any],
                                                     fragment: str) -> None:
    doc = copy.deepcopy(SPA)
    doc["spec"]["trainer"]["podTemplate"] = override
    with pytest.raises(InvalidManifest) as info:
        parse_object(doc)
    messages = [str(e) for e in info.value.errors]
    assert any(m.startswith("spec.trainer.podTemplate") and fragment in m for m in messages), \
        messages


def test_rlaif_validate_reports_a_restricted_pss_breach(tmp_path: Path) -> None:
    doc = copy.deepcopy(SPA)
    doc["spec"]["rewards"][1]["podTemplate"] = {"spec": {"containers": [
        {"name": "server", "securityContext": {"allowPrivilegeEscalation": True}}]}}
    file = tmp_path / "job.yaml"
    file.write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, "-m", "rlaif.cli", "validate", str(file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert (f"{file}: spec.rewards[1].podTemplate: breaks the restricted Pod Security Standard:"
            f" spec.containers[0].securityContext.allowPrivilegeEscalation: must be false"
            ) in result.stderr


def test_full_check_finds_what_the_built_pods_set() -> None:
    """The checker itself: a bare pod lacks every required setting."""
    errors = restricted_violations({"containers": [{"name": "x"}]})
    assert any("allowPrivilegeEscalation: must be false" in e for e in errors)
    assert any("capabilities.drop: must include ALL" in e for e in errors)
    assert any("runAsNonRoot: must be true" in e for e in errors)
    assert any("seccompProfile.type" in e for e in errors)
    with pytest.raises(ValidationError):
        PodTemplate.model_validate({"spec": {"containers": [
            {"name": "trainer", "securityContext": {"procMount": "Unmasked"}}]}})
