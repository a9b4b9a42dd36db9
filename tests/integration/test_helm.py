"""The Helm chart with the real helm binary: lint, render with default and non-default values,
validate every object against the official schemas, check RBAC and pod security; and the
kustomize base rendered from it by the real kubectl."""

from __future__ import annotations

import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rlaif.operator import install_manifests
from tests.conftest import REPO
from tests.unit.test_builders import K8S_VERSION, assert_restricted

CHART = REPO / "charts" / "rlaif-operator"
NON_DEFAULT = ["--set", "watchNamespaces={ml,research}", "--set", "logFormat=json",
               "--set", "webhook.enabled=true", "--set", "webhook.certSecret=rlaif-webhook-tls",
               "--set", "metrics.enabled=false", "--set", "image.tag=dev",
               "--set", "serviceAccount.name=rlaif", "--set", "verbose=true"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["helm", *args], capture_output=True, text=True, check=check,
                          timeout=60)


def template(*values: str) -> list[dict[str, Any]]:
    out = helm("template", "rlaif", str(CHART), "--namespace", "rlaif-system", *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


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
    assert leader["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                "verbs": ["get", "create", "patch"]}]
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
    (webhook_role,) = by_kind(docs, "ClusterRole")
    assert webhook_role["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"],
                                      "resources": ["validatingwebhookconfigurations"],
                                      "verbs": ["get", "list", "watch", "create", "patch"]}]
    box = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert box["image"].endswith(":dev")
    assert {"--namespace=ml", "--namespace=research", "--log-format=json", "--verbose"} <= set(
        box["args"]) and "--all-namespaces" not in box["args"]
    env = {e["name"]: e.get("value") for e in box["env"]}
    assert env["RLAIF_WEBHOOK_PORT"] == "9443" and "RLAIF_METRICS_PORT" not in env
    assert env["RLAIF_WEBHOOK_HOST"] == "rlaif-rlaif-operator-webhook.rlaif-system.svc"
    services = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    assert services == {"rlaif-rlaif-operator-webhook"}


@pytest.mark.parametrize("values,words", [
    (["--set", "replicas=5"], "replicas"),
    (["--set", "logFormat=xml"], "logFormat"),
    (["--set", "bogus=1"], "bogus"),
    (["--set", "watchNamespaces={Not_A_Namespace}"], "watchNamespaces"),
    (["--set", "webhook.enabled=true"], "webhook.certSecret is required"),
])
def test_bad_values_are_refused_naming_the_key(values: list[str], words: str) -> None:
    result = helm("template", "rlaif", str(CHART), *values, check=False)
    assert result.returncode != 0 and words in result.stderr


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
