"""The validating admission webhook as the chart installs it: the chart's
ValidatingWebhookConfiguration and generated certificate Secret (rendered by the real helm),
the real operator serving kopf's webhook over TLS with that Secret's files, and AdmissionReviews
posted the way the API server sends them (the emulator does not call webhooks itself): to the
Service's path, trusting only the configuration's caBundle, checking the certificate against the
Service's DNS name. The operator registers no webhook configuration of its own."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from benchmarks.operator_emulator import EmulatedCluster, wait_for
from rlaif import constants as c
from rlaif.operator import admission
from tests.conftest import EXAMPLES
from tests.integration.test_helm import by_kind, template

ADMISSION = "admissionregistration.k8s.io"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Webhook:
    """Where the API server would send reviews, and what it would trust."""

    port: int
    path: str
    host: str
    """The Service's DNS name the certificate must be valid for."""
    ca_bundle: bytes


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return template("--set", "webhook.enabled=true")


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory, rendered: list[dict[str, Any]]
            ) -> Iterator[Webhook]:
    """A running operator with the chart's webhook settings and certificate."""
    workdir = tmp_path_factory.mktemp("webhook")
    certs = workdir / "certs"
    certs.mkdir()
    (secret,) = by_kind(rendered, "Secret")
    for key, value in secret["data"].items():  # the Deployment mounts these three files
        (certs / key).write_bytes(base64.b64decode(value))
    (config,) = by_kind(rendered, "ValidatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    service = hook["clientConfig"]["service"]
    (box,) = by_kind(rendered, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in box["env"] if e["name"].startswith("RLAIF_WEBHOOK")}
    assert env.keys() == {"RLAIF_WEBHOOK_PORT", "RLAIF_WEBHOOK_CERT_DIR"}
    port = _free_port()
    with EmulatedCluster(workdir) as cluster:
        cluster.start_operator(workdir / "operator.log", RLAIF_WEBHOOK_PORT=str(port),
                               RLAIF_WEBHOOK_CERT_DIR=str(certs))
        try:
            wait_for(lambda: _listening(port), timeout=30, what="the webhook server")
            yield Webhook(port, service["path"], f"{service['name']}.{service['namespace']}.svc",
                          base64.b64decode(hook["clientConfig"]["caBundle"]))
            # After every review: the operator never touched a webhook configuration.
            assert cluster.emulator is not None
            listed = cluster.client().request(
                "GET", f"/apis/{ADMISSION}/v1/validatingwebhookconfigurations")
            assert listed is not None
            assert listed["items"] == [], "the operator must not register a configuration"
            assert not [call for call in cluster.emulator.operator_calls
                        if call.group == ADMISSION]
        finally:
            cluster.stop_operator()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def review(hook: Webhook, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """POST an AdmissionReview as the API server does, verifying the server's certificate."""
    request = {"uid": str(uuid.uuid4()), "operation": "UPDATE" if old else "CREATE",
               "kind": {"group": c.GROUP, "version": c.VERSION, "kind": c.JOB_KIND},
               "resource": {"group": c.GROUP, "version": c.VERSION, "resource": c.JOB_PLURAL},
               "namespace": "ml", "name": obj["metadata"]["name"], "object": obj,
               "oldObject": old, "userInfo": {"username": "alice"}, "dryRun": False}
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": request})
    context = ssl.create_default_context(cadata=hook.ca_bundle.decode())
    raw = socket.create_connection(("127.0.0.1", hook.port), timeout=10)
    conn = http.client.HTTPSConnection(hook.host, hook.port, context=context, timeout=10)
    conn.sock = context.wrap_socket(raw, server_hostname=hook.host)  # the Service's name
    try:
        conn.request("POST", hook.path, body, {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())["response"]
    finally:
        conn.close()
    assert answer["uid"] == request["uid"]
    return answer


def test_the_chart_configuration_sends_job_writes_to_the_operators_path(
        rendered: list[dict[str, Any]]) -> None:
    (config,) = by_kind(rendered, "ValidatingWebhookConfiguration")
    assert config["metadata"]["name"] == "rlaif-rlaif-operator-webhook"  # one per release
    (hook,) = config["webhooks"]
    (rule,) = hook["rules"]
    assert rule["resources"] == [c.JOB_PLURAL] and set(rule["operations"]) == {
        "CREATE", "UPDATE"}
    assert hook["clientConfig"]["service"]["path"] == f"/{admission.WEBHOOK_ID}"
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    excluded = {v for e in hook["namespaceSelector"]["matchExpressions"]
                if e["operator"] == "NotIn" for v in e["values"]}
    assert {"kube-system", "disabled"} <= excluded


def _job() -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "grpo-rlaif-spa.yaml").read_text())
    doc["metadata"]["namespace"] = "ml"
    return doc


def test_live_changes_are_admitted(webhook: Webhook) -> None:
    old = _job()
    new = copy.deepcopy(old)
    new["spec"]["rewards"][1]["replicas"] = 4
    new["spec"]["rewards"][0]["weight"] = 0.4
    assert review(webhook, new, old)["allowed"] is True
    assert review(webhook, old, None)["allowed"] is True


def test_immutable_field_changes_are_refused_naming_the_field(webhook: Webhook) -> None:
    old = _job()
    new = copy.deepcopy(old)
    new["spec"]["policy"]["model"] = "/models/other"
    answer = review(webhook, new, old)
    assert answer["allowed"] is False and answer["status"]["code"] == 422
    assert answer["status"]["message"].startswith("spec.policy: cannot be changed")


def test_invalid_specs_are_refused_naming_the_field(webhook: Webhook) -> None:
    bad = _job()
    bad["spec"]["grpo"]["groupSize"] = 1
    answer = review(webhook, bad, None)
    assert answer["allowed"] is False
    assert "spec.grpo.groupSize: must be at least 2" in answer["status"]["message"]
