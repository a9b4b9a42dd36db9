"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class OperatorConfig:
    """Each field maps to the environment variable ``RLAIF_<FIELD>`` (upper case)."""

    reconcile_interval: float = 30.0
    """Seconds between visits of each unfinished job (timeouts, metrics); changes to jobs,
    servers and their children are acted on at once through the watches."""
    resync_interval: float = 600.0
    """Seconds between full resyncs of every job and server from the informer cache (changes
    to them or their children trigger a reconciliation at once; this only catches up)."""
    start_timeout: int = 1800
    """Seconds trainer pods may stay unscheduled or unable to start before the job fails."""
    restart_backoff: float = 10.0
    """Seconds before the first trainer gang restart; doubles with each failure (10 min at
    most), as the Job controller's own backoff does."""
    leader_election: bool = False
    """Reconcile only while holding a Lease, so two replicas never act at once (the chart
    turns it on; off for one-process development runs)."""
    lease_namespace: str = "default"
    """Namespace of the leader-election Lease (the chart passes the operator's own)."""
    lease_name: str = "rlaif-operator"
    """Name of the leader-election Lease."""
    lease_seconds: int = 15
    """How long a Lease stays valid without renewal: a crashed leader's successor waits
    at most this long."""
    scrape_metrics: bool = True
    """Scrape rank 0's Prometheus endpoint into status while a job runs."""
    metrics_port: int = 0
    """Port of the operator's own Prometheus metrics (reconciliations, API calls); 0 = off."""
    webhook_port: int = 0
    """Port of kopf's validating admission webhook; 0 leaves it off (a condition is the
    fallback for immutable-field changes). The chart owns the ValidatingWebhookConfiguration:
    the operator only serves the webhook and never registers one."""
    webhook_cert_dir: str = "/etc/rlaif/webhook"
    """Folder with the webhook's tls.crt, tls.key and optionally ca.crt (cert-manager's
    layout); kopf's self-signed alternative needs oscrypto, which fails on OpenSSL 3."""
    cluster_scanning: bool = True
    """Let kopf watch CRDs and namespaces cluster-wide; off in a namespaced install, whose
    Roles grant nothing cluster-wide."""
    prometheus_namespace: str = ""
    """Namespace of the Prometheus allowed through each job's NetworkPolicy to its reward
    servers' /metrics; empty adds no such rule."""
    prometheus_pod_labels: str = ""
    """Labels of those Prometheus pods, ``key=value,key=value`` (empty: any pod there)."""

    def scraper(self) -> tuple[str, dict[str, str]] | None:
        """(namespace, pod labels) of the Prometheus let through to reward /metrics, or None."""
        if not self.prometheus_namespace:
            return None
        labels = {}
        for pair in filter(None, (p.strip() for p in self.prometheus_pod_labels.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"RLAIF_PROMETHEUS_POD_LABELS: {pair!r} is not key=value")
            labels[key.strip()] = value.strip()
        return self.prometheus_namespace, labels

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"RLAIF_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(cls, f.name))
            try:
                values[f.name] = (raw.lower() in ("1", "true", "yes")) if kind is bool \
                    else kind(raw)
            except ValueError:
                raise ValueError(f"RLAIF_{f.name.upper()}={raw!r}: expected "
                                 f"{kind.__name__}") from None
        return cls(**values)  # type: ignore[arg-type]
