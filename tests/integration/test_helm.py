"""The Helm chart with the real helm binary: lint, render with default and non-default values,
validate every object against the official schemas, check RBAC and pod security; and the
kustomize base rendered from it by the real kubectl."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rlaif.api.models import RewardServer, RLAIFJob
from rlaif.operator import admission, install_manifests
from rlaif.operator import job_builders as jb
from rlaif.operator import server_builders as sb
from rlaif.operator.reconcile import INDEX_ANNOTATION
from rlaif.rewards.metrics import ServerMetrics
from tests.conftest import EXAMPLES, REPO
from tests.unit.test_builders import K8S_VERSION, assert_restricted

CHART = REPO / "charts" / "rlaif-operator"
NON_DEFAULT = ["--set", "watchNamespaces={ml,research}", "--set", "logFormat=json",
               "--set", "webhook.enabled=true",
               "--set", "metrics.enabled=false", "--set", "image.tag=dev",
               "--set", "serviceAccount.name=rlaif", "--set", "verbose=true"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["helm", *args], capture_output=True, text=True, check=check,
                          timeout=60)


def helm_docs(*args: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def template(*values: str) -> list[dict[str, Any]]:
    return helm_docs("template", "rlaif", str(CHART), "--namespace", "rlaif-system", *values)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)


def test_helm_lint_passes_strict() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_rendered_objects_pass_kubernetes_schemas(values: list[str]) -> None:
    docs = template(*values)
    assert by_kind(docs, "Deployment") and by_kind(docs, "ServiceAccount")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert_restricted("operator", pod)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_chart_crds_are_the_generated_ones() -> None:
    # The chart installs crds/ untouched; test_crds.py checks them against `rlaif crd`.
    for path in (CHART / "crds").glob("*.yaml"):
        assert path.read_text() == (REPO / "manifests" / "crds" / path.name).read_text()


def test_default_install_watches_every_namespace_with_a_cluster_role() -> None:
    docs = template()
    (leader,) = by_kind(docs, "Role")  # the leader-election Lease, in the release namespace
    assert leader["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["rlaif-rlaif-operator"], "verbs": ["get", "patch"]}]
    (role,) = by_kind(docs, "ClusterRole")
    rules = role["rules"]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    assert not allowed(rules, "", "secrets", "get"), "the operator never reads Secrets"
    assert allowed(rules, "rlaif.dev", "rlaifjobs/status", "patch")
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and "--standalone" in args


def test_namespaced_install_uses_roles_and_no_cluster_wide_rights() -> None:
    docs = template(*NON_DEFAULT)
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    assert roles == {("ml", "rlaif-rlaif-operator"), ("research", "rlaif-rlaif-operator"),
                     ("rlaif-system", "rlaif-rlaif-operator-leader")}
    bindings = by_kind(docs, "RoleBinding")
    assert {b["subjects"][0]["name"] for b in bindings} == {"rlaif"}
    # The chart owns the webhook configuration: the operator gets no right to any.
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    box = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert box["image"].endswith(":dev")
    assert {"--namespace=ml", "--namespace=research", "--log-format=json", "--verbose"} <= set(
        box["args"]) and "--all-namespaces" not in box["args"]
    env = {e["name"]: e.get("value") for e in box["env"]}
    assert env["RLAIF_WEBHOOK_PORT"] == "9443" and "RLAIF_METRICS_PORT" not in env
    assert env["RLAIF_CLUSTER_SCANNING"] == "false"
    services = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    assert services == {"rlaif-rlaif-operator-webhook"}


@pytest.mark.parametrize("values,words", [
    (["--set", "replicas=5"], "replicas"),
    (["--set", "logFormat=xml"], "logFormat"),
    (["--set", "bogus=1"], "bogus"),
    (["--set", "watchNamespaces={Not_A_Namespace}"], "watchNamespaces"),
    (["--set", "webhook.failurePolicy=Sometimes"], "failurePolicy"),
    (["--set", "metrics.scraper.namespace=Not_A_Namespace"], "scraper"),
])
def test_bad_values_are_refused_naming_the_key(values: list[str], words: str) -> None:
    result = helm("template", "rlaif", str(CHART), *values, check=False)
    assert result.returncode != 0 and words in result.stderr


def test_webhook_is_owned_by_the_release_and_spares_system_namespaces() -> None:
    """Named after the release (two releases do not collide), scoped by a namespaceSelector,
    its CA from the Secret the chart generates (or injected by cert-manager)."""
    docs = template("--set", "webhook.enabled=true", "--set", "watchNamespaces={ml}")
    (config,) = by_kind(docs, "ValidatingWebhookConfiguration")
    assert config["metadata"]["name"] == "rlaif-rlaif-operator-webhook"
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    selector = hook["namespaceSelector"]["matchExpressions"]
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": ["kube-system", "kube-public", "kube-node-lease"]} in selector
    assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml"]} in selector
    (secret,) = by_kind(docs, "Secret")
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert hook["clientConfig"]["service"]["path"] == f"/{admission.WEBHOOK_ID}"
    other = by_kind(helm_docs("template", "other", str(CHART), "--set", "webhook.enabled=true"),
                    "ValidatingWebhookConfiguration")
    assert other[0]["metadata"]["name"] != config["metadata"]["name"]
    managed = template("--set", "webhook.enabled=true", "--set",
                       "webhook.certManager.enabled=true")
    (config,) = by_kind(managed, "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        "rlaif-system/rlaif-rlaif-operator-webhook"
    assert {d["kind"] for d in managed} >= {"Certificate", "Issuer"}
    assert not by_kind(managed, "Secret")


def test_helm_uninstall_leaves_no_cluster_scoped_object_behind() -> None:
    """Everything cluster-scoped the chart creates is a template of this release (helm
    uninstall deletes it; nothing is kept by policy or created by a hook), and the operator
    creates none at run time (test_operator.py's RBAC replay: no cluster-wide create).
    The CRDs in crds/ are the exception Helm makes for every chart: kept on purpose."""
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration",
                      "MutatingWebhookConfiguration", "Namespace", "PriorityClass",
                      "CustomResourceDefinition", "StorageClass"}
    for values in ([], ["--set", "webhook.enabled=true"], NON_DEFAULT):
        for doc in template(*values):
            annotations = doc["metadata"].get("annotations") or {}
            assert "helm.sh/resource-policy" not in annotations, doc["metadata"]["name"]
            assert "helm.sh/hook" not in annotations, doc["metadata"]["name"]
            if doc["kind"] in cluster_scoped:
                assert doc["kind"] != "CustomResourceDefinition"
                assert doc["metadata"]["name"].startswith("rlaif-"), doc["metadata"]["name"]
            else:
                assert doc["metadata"].get("namespace") or doc["kind"] == "ServiceAccount"


def test_monitoring_selects_the_pods_the_operator_builds() -> None:
    """The PodMonitors select the reward and rank-0 trainer pods by labels the builders set,
    on ports they name; the dashboard is valid JSON and queries only metrics that exist."""
    docs = template("--set", "metrics.podMonitor.enabled=true", "--set",
                    "metrics.dashboard.enabled=true")
    monitors = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "PodMonitor")}
    job = RLAIFJob.model_validate(yaml.safe_load((EXAMPLES / "quickstart-cpu.yaml").read_text()))
    server = RewardServer.model_validate(jb.build_reward_servers(job)[0])
    reward_pod = sb.build_deployment(server)["spec"]["template"]
    trainer_pod = jb.build_trainer_job(job, 0)["spec"]["template"]
    for name, pod in (("rlaif-rlaif-operator-reward-servers", reward_pod),
                      ("rlaif-rlaif-operator-trainers", trainer_pod)):
        wanted = dict(monitors[name]["selector"]["matchLabels"])
        wanted.pop(INDEX_ANNOTATION, None)  # set on pods by the Job controller
        assert wanted.items() <= pod["metadata"]["labels"].items(), name
        ports = {p["name"] for box in pod["spec"]["containers"] for p in box.get("ports", [])}
        assert {e["port"] for e in monitors[name]["podMetricsEndpoints"]} <= ports, name
    (dashboard,) = [d for d in by_kind(docs, "ConfigMap") if "rlaif.json" in d["data"]]
    exprs = " ".join(t["expr"] for p in json.loads(dashboard["data"]["rlaif.json"])["panels"]
                     for t in p.get("targets", []))
    assert "rlaif_reward_queue_depth" in exprs  # the autoscaling signal
    exported = {m.name for m in ServerMetrics("asr").registry.collect()}
    for module in ("trainer/metrics.py", "operator/telemetry.py"):
        exported |= set(re.findall(r'"(rlaif_[a-z_]+)"', (REPO / module).read_text()))
    for metric in re.findall(r"\b(rlaif_[a-z_]+)", exprs):
        assert re.sub(r"_(bucket|total)$", "", metric) in exported or metric in exported, metric


def test_kustomize_base_is_the_chart_rendered_and_renders() -> None:
    committed = (REPO / "manifests" / "operator.yaml").read_text()
    assert committed == install_manifests.render(), \
        "manifests/operator.yaml is stale: run `make manifests` and commit it"
    kubectl = REPO / ".venv" / "bin" / "kubectl"
    out = subprocess.run([str(kubectl), "kustomize", str(REPO / "manifests")],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 2 and "Deployment" in kinds
    assert "Namespace" in kinds
    for doc in docs:
        if doc["kind"] != "CustomResourceDefinition":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert "helm.sh/chart" not in (doc["metadata"].get("labels") or {})
