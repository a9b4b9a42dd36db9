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
