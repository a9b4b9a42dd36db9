"""The operator's HTTP client against a real local HTTP server: the official client's
configuration (host, credentials and their refresh hook) is honoured without going through
its per-request machinery."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import kubernetes
import pytest

from rlaif.operator.kube import USER_AGENT, ApiError, Kube


class _Api(BaseHTTPRequestHandler):
    """Accepts only ``Bearer fresh``; echoes what it got."""

    seen: ClassVar[list[tuple[str, str, str, str]]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.seen.append((self.command, self.path, self.headers.get("Authorization", ""),
                          self.headers.get("User-Agent", "")))
        answer: dict[str, Any]
        if self.headers.get("Authorization") != "Bearer fresh":
            status, answer = 401, {"kind": "Status", "reason": "Unauthorized"}
        elif self.path.endswith("/missing"):
            status, answer = 404, {"kind": "Status", "reason": "NotFound"}
        elif self.path.endswith("/invalid"):
            status, answer = 422, {"reason": "Invalid", "message": "bad", "details": {
                "causes": [{"field": "spec.replicas"}]}}
        else:
            status, answer = 200, {"got": json.loads(body) if body else None,
                                   "type": self.headers.get("Content-Type")}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    _Api.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_requests_carry_credentials_and_reread_them_once_on_401(server: str) -> None:
    refreshes: list[int] = []

    def refresh(config: kubernetes.client.Configuration) -> None:
        """An expiring token: the first read gives the stale one."""
        refreshes.append(1)
        config.api_key["authorization"] = "stale" if len(refreshes) == 1 else "fresh"

    config = kubernetes.client.Configuration(host=server)
    config.api_key["authorization"] = "unread"
    config.api_key_prefix["authorization"] = "Bearer"
    config.refresh_api_key_hook = refresh  # type: ignore[assignment]
    api = kubernetes.client.ApiClient(config)
    api.user_agent = USER_AGENT
    kube = Kube(api)

    assert kube.request("POST", "/api/v1/namespaces/ml/configmaps", {"a": [1]}) == {
        "got": {"a": [1]}, "type": "application/json"}
    assert [s[2] for s in _Api.seen] == ["Bearer stale", "Bearer fresh"]
    assert {s[3] for s in _Api.seen} == {USER_AGENT}
    patched = kube.patch("v1", "ConfigMap", "ml", "x", {"data": {}})
    assert patched == {"got": {"data": {}}, "type": "application/merge-patch+json"}
    assert kube.get("v1", "ConfigMap", "ml", "missing") is None
    with pytest.raises(ApiError) as refused:
        kube.request("PATCH", "/api/v1/namespaces/ml/configmaps/invalid", {})
    assert (refused.value.status, refused.value.fields) == (422, ["spec.replicas"])
    assert len(refreshes) == 2  # the fresh token is reused, not re-read per request
    assert len(_Api.seen) == 5


def test_a_token_that_stays_refused_is_an_api_error(server: str) -> None:
    config = kubernetes.client.Configuration(host=server)
    config.api_key["authorization"] = "Bearer revoked"
    kube = Kube(kubernetes.client.ApiClient(config))
    with pytest.raises(ApiError) as refused:
        kube.get("v1", "ConfigMap", "ml", "x")
    assert refused.value.status == 401
    assert len(_Api.seen) == 2  # tried once more with the credentials read again
