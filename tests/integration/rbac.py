"""Kubernetes RBAC authorisation, evaluated on the chart's rendered Roles and bindings, so the
API calls the real operator made (recorded by the emulator) are replayed against the rules a
cluster would enforce: verbs, groups, resources and subresources, resourceNames, and a Role's
namespace. Not a copy of the API server's authoriser: aggregation and non-resource URLs,
which the chart does not use, are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.operator_emulator import Call


@dataclass(frozen=True)
class Grant:
    """One rule bound to the operator's ServiceAccount, and where it applies (None: the
    whole cluster, through a ClusterRoleBinding)."""

    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    names: tuple[str, ...]
    """resourceNames (empty: any)."""
    namespace: str | None
    role: str

    def allows(self, call: Call) -> bool:
        resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
        if self.namespace is not None and call.namespace != self.namespace:
            return False  # a Role reaches its own namespace only (never cluster scope)
        if self.names and call.name not in self.names:
            return False  # resourceNames cannot authorise lists, watches or creates
        return (call.group in self.groups and resource in self.resources
                and call.verb in self.verbs)

    def permissions(self) -> set[tuple[str, str, str, str]]:
        """Each (group, resource, verb, name) the rule grants, to find the unused ones."""
        return {(g, r, v, n) for g in self.groups for r in self.resources for v in self.verbs
                for n in self.names or ("",)}


def _subject_matches(binding: dict[str, Any], account: str, namespace: str) -> bool:
    return any(s.get("kind") == "ServiceAccount" and s.get("name") == account
               and s.get("namespace") == namespace for s in binding.get("subjects") or [])


def grants(docs: list[dict[str, Any]], account: str, namespace: str) -> list[Grant]:
    """The rules bound to ServiceAccount ``namespace/account`` in the rendered objects."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    out = []
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or not _subject_matches(
                binding, account, namespace):
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role_ns = scope if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        for rule in role.get("rules") or []:
            out.append(Grant(tuple(rule.get("apiGroups") or ()), tuple(rule["resources"]),
                             tuple(rule["verbs"]), tuple(rule.get("resourceNames") or ()),
                             scope, f"{ref['kind']} {ref['name']}"))
    return out


def denied(calls: set[Call], granted: list[Grant]) -> list[Call]:
    """The calls no rule allows (each would be answered 403 Forbidden)."""
    return sorted(call for call in calls if not any(g.allows(call) for g in granted))


def unused(calls: set[Call], granted: list[Grant]) -> list[tuple[str, str, str, str, str]]:
    """(role, group, resource, verb, name) granted but never needed by any call: privilege to
    take away."""
    used: set[tuple[str, tuple[str, str, str, str]]] = set()
    for call in calls:
        resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
        for g in granted:
            if g.allows(call):
                used.add((g.role, (call.group, resource, call.verb,
                                   call.name if g.names else "")))
    return sorted((g.role, *perm) for g in granted for perm in g.permissions()
                  if (g.role, perm) not in used)
