"""The operator's own Prometheus metrics: how often it reconciles, how long that takes, how
many API calls it makes and how many reconciliations failed."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter("rlaif_operator_reconciles_total", "Reconciliations run.", ["kind"])
FAILURES = Counter("rlaif_operator_reconcile_errors_total", "Reconciliations that raised.",
                   ["kind"])
SECONDS = Histogram("rlaif_operator_reconcile_seconds", "Time per reconciliation.", ["kind"])
API_CALLS = Counter("rlaif_operator_api_requests_total", "Kubernetes API requests made.")
