"""RewardServer status from its Deployment and pods: what the scale subresource, HPAs and
the jobs using the server read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rlaif import constants as c
from rlaif.api.models import RewardServer
from rlaif.operator import conditions as cond
from rlaif.operator.server_builders import endpoint, selector_string
from rlaif.operator.workloads import (
    Manifest,
    deployment_problem,
    deployment_ready,
    first_problem,
)


def server_status(server: RewardServer, deployment: Manifest | None, pods: list[Manifest],
                  old: dict[str, Any], now: datetime, *, wanted: int | None = None
                  ) -> dict[str, Any]:
    """status of a RewardServer; ``wanted`` is the replica count in force (0 when suspended)."""
    replicas, ready = deployment_ready(deployment)
    wanted = server.spec.replicas if wanted is None else wanted
    problem = first_problem(pods) or deployment_problem(deployment)
    if wanted == 0:
        ok, reason, message = False, "ScaledToZero", "replicas is 0"
    elif ready >= 1:
        ok, reason, message = True, "Ready", f"{ready}/{wanted} replica(s) ready"
    elif problem is not None:
        ok, reason, message = False, problem.reason, problem.message
    else:
        ok, reason, message = False, "Starting", f"0/{wanted} replica(s) ready (loading model)"
    conditions = cond.set_condition(list(old.get("conditions") or []), c.COND_READY, ok, reason,
                                    message, now)
    return {
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": selector_string(server),
        "endpoint": endpoint(server.metadata.name, server.metadata.namespace),
        "conditions": conditions,
    }


def problem_of(status: dict[str, Any]) -> str:
    """The reason a server is not ready, for the job's RewardsReady message."""
    ready = cond.find(status.get("conditions") or [], c.COND_READY)
    if ready is None or ready.get("status") == "True":
        return ""
    return f"{ready.get('reason')}: {ready.get('message')}"
