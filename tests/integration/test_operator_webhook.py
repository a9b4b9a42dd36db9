"""The validating admission webhook: the real operator serves kopf's webhook over TLS (a
certificate made with openssl, as cert-manager would provide one), registers its
ValidatingWebhookConfiguration in the emulator, and answers AdmissionReviews the way the API
server sends them (the emulator does not call webhooks itself)."""

from __future__ import annotations

import copy
import json
import socket
import ssl
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.operator_emulator import EmulatedCluster, wait_for
from rlaif import constants as c
from tests.conftest import EXAMPLES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(webhook URL, CA file) of a running operator with the webhook on."""
    workdir = tmp_path_factory.mktemp("webhook")
    certs = workdir / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")],
                   check=True, capture_output=True)
    with EmulatedCluster(workdir) as cluster:
        cluster.start_operator(workdir / "operator.log", RLAIF_WEBHOOK_PORT=str(_free_port()),
                               RLAIF_WEBHOOK_HOST="127.0.0.1", RLAIF_WEBHOOK_CERT_DIR=str(certs))
        try:
            kube = cluster.client()
            # kopf creates the configuration, then fills in its webhooks: wait for those.
            config = wait_for(lambda: (kube.request(
                "GET", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
                f"validate.{c.GROUP}") or {}).get("webhooks"), timeout=30,
                what="the webhook configuration's webhooks")
            (hook,) = config
            rule = hook["rules"][0]
            assert c.JOB_PLURAL in rule["resources"] and set(rule["operations"]) == {
                "CREATE", "UPDATE"}
            assert hook["clientConfig"]["caBundle"]
            yield hook["clientConfig"]["url"], certs / "tls.crt"
        finally:
            cluster.stop_operator()


def review(url: str, ca: Path, obj: dict[str, Any], old: dict[str, Any] | None
           ) -> dict[str, Any]:
    """POST an AdmissionReview as the API server does, verifying the server's certificate."""
    request = {"uid": str(uuid.uuid4()), "operation": "UPDATE" if old else "CREATE",
               "kind": {"group": c.GROUP, "version": c.VERSION, "kind": c.JOB_KIND},
               "resource": {"group": c.GROUP, "version": c.VERSION, "resource": c.JOB_PLURAL},
               "namespace": "ml", "name": obj["metadata"]["name"], "object": obj,
               "oldObject": old, "userInfo": {"username": "alice"}, "dryRun": False}
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": request}).encode()
    context = ssl.create_default_context(cafile=str(ca))
    http = urllib.request.Request(url, data=body, method="POST",
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(http, context=context, timeout=10) as resp:
        answer = json.loads(resp.read())["response"]
    assert answer["uid"] == request["uid"]
    return answer


def _job() -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "grpo-rlaif-spa.yaml").read_text())
    doc["metadata"]["namespace"] = "ml"
    return doc


def test_live_changes_are_admitted(webhook: tuple[str, Path]) -> None:
    old = _job()
    new = copy.deepcopy(old)
    new["spec"]["rewards"][1]["replicas"] = 4
    new["spec"]["rewards"][0]["weight"] = 0.4
    assert review(*webhook, new, old)["allowed"] is True
    assert review(*webhook, old, None)["allowed"] is True


def test_immutable_field_changes_are_refused_naming_the_field(webhook: tuple[str, Path]) -> None:
    old = _job()
    new = copy.deepcopy(old)
    new["spec"]["policy"]["model"] = "/models/other"
    answer = review(*webhook, new, old)
    assert answer["allowed"] is False and answer["status"]["code"] == 422
    assert answer["status"]["message"].startswith("spec.policy: cannot be changed")


def test_invalid_specs_are_refused_naming_the_field(webhook: tuple[str, Path]) -> None:
    bad = _job()
    bad["spec"]["grpo"]["groupSize"] = 1
    answer = review(*webhook, bad, None)
    assert answer["allowed"] is False
    assert "spec.grpo.groupSize: must be at least 2" in answer["status"]["message"]
