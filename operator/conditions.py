"""Kubernetes-style conditions as plain dicts: set one, find one, say what changed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

Condition = dict[str, Any]


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((cond for cond in conditions if cond.get("type") == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    cond = find(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def set_condition(conditions: list[Condition], type_: str, status: bool, reason: str,
                  message: str, now: datetime) -> list[Condition]:
    """A new list with ``type_`` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    old = find(conditions, type_)
    since = old["lastTransitionTime"] if old and old.get("status") == value else now_iso(now)
    new = {"type": type_, "status": value, "reason": reason, "message": message,
           "lastTransitionTime": since}
    return [new if cond is old else cond for cond in conditions] if old else [*conditions, new]


def since(conditions: list[Condition], type_: str) -> datetime | None:
    """When ``type_`` last changed status."""
    cond = find(conditions, type_)
    return parse_time(cond.get("lastTransitionTime")) if cond else None


def transitions(old: list[Condition], new: list[Condition]) -> list[Condition]:
    """Conditions whose status or reason differs from before (each gets an Event)."""
    changed = []
    for cond in new:
        prev = find(old, cond["type"])
        if prev is None or (prev.get("status"), prev.get("reason")) != (cond["status"],
                                                                         cond["reason"]):
            changed.append(cond)
    return changed


CHILDREN_READY = "ChildrenReady"
"""False while the API server refuses to create or change a child (quota, RBAC, admission,
an invalid field); the reason says which, the message quotes the API server."""


def api_error_reason(status: int, reason: str, detail: str) -> str:
    """A condition reason for a refused API call (the Status object's own reason refined:
    a ResourceQuota and an admission webhook both answer 403 Forbidden)."""
    text = detail.lower()
    if "exceeded quota" in text or ("quota" in text and status == 403):
        return "QuotaExceeded"
    if "admission webhook" in text or "denied the request" in text:
        return "AdmissionDenied"
    known = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
             422: "Invalid", 429: "TooManyRequests"}
    return reason or known.get(status) or ("ServerError" if status >= 500 else f"HTTP{status}")


def children_condition(conditions: list[Condition], error: tuple[int, str, str, list[str]] | None,
                       what: str, now: datetime) -> list[Condition]:
    """``conditions`` with ChildrenReady set from the last child write: ``error`` is the
    refused call's (HTTP status, Status reason, message, refused fields), ``what`` the call."""
    if error is None:
        return set_condition(conditions, CHILDREN_READY, True, "Synced",
                             "every child exists and matches the spec", now)
    status, reason, detail, fields = error
    message = f"{what}: {detail}" + (f" (fields: {', '.join(fields)})" if fields else "")
    return set_condition(conditions, CHILDREN_READY, False,
                         api_error_reason(status, reason, detail), message, now)
