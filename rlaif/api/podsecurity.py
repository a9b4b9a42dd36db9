"""The Kubernetes "restricted" Pod Security Standard as a check on plain pod-spec dicts.

Used two ways: on a user's partial ``podTemplate`` (``partial=True``: only what it sets is
judged, since the operator's own pod already complies) so ``rlaif validate`` and the operator
refuse an override that would make the namespace's admission reject the pods; and on built
pods in the tests (``partial=False``: the required settings must be present).
See https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted.
"""

from __future__ import annotations

from typing import Any

RESTRICTED_VOLUME_TYPES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                     "persistentVolumeClaim", "projected", "secret"})
ALLOWED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})


def _seccomp(where: str, context: dict[str, Any], required: bool) -> list[str]:
    kind = (context.get("seccompProfile") or {}).get("type")
    if kind is None:
        return [f"{where}.seccompProfile.type: must be RuntimeDefault or Localhost"] \
            if required else []
    if kind not in ALLOWED_SECCOMP:
        return [f"{where}.seccompProfile.type: {kind!r} is not allowed (RuntimeDefault or "
                f"Localhost)"]
    return []


def _identity(where: str, context: dict[str, Any]) -> list[str]:
    errors = []
    if context.get("runAsNonRoot") is False:
        errors.append(f"{where}.runAsNonRoot: must not be false")
    if context.get("runAsUser") == 0:
        errors.append(f"{where}.runAsUser: must not be 0 (root)")
    return errors


def _container(where: str, box: dict[str, Any], pod_nonroot: bool, partial: bool) -> list[str]:
    sc = box.get("securityContext") or {}
    where = f"{where}.securityContext"
    errors = _identity(where, sc)
    if sc.get("privileged") is True:
        errors.append(f"{where}.privileged: must not be true")
    if sc.get("allowPrivilegeEscalation") is True or (
            not partial and sc.get("allowPrivilegeEscalation") is not False):
        errors.append(f"{where}.allowPrivilegeEscalation: must be false")
    caps = sc.get("capabilities") or {}
    if extra := set(caps.get("add") or []) - ALLOWED_CAPABILITIES:
        errors.append(f"{where}.capabilities.add: {sorted(extra)} not allowed (only "
                      f"NET_BIND_SERVICE)")
    if not partial and "ALL" not in (caps.get("drop") or []):
        errors.append(f"{where}.capabilities.drop: must include ALL")
    if not partial and not pod_nonroot and sc.get("runAsNonRoot") is not True:
        errors.append(f"{where}.runAsNonRoot: must be true (here or on the pod)")
    if sc.get("procMount") not in (None, "Default"):
        errors.append(f"{where}.procMount: must be Default")
    if any(p.get("hostPort") for p in box.get("ports") or []):
        errors.append(f"{where[:-len('.securityContext')]}.ports: hostPort is not allowed")
    return errors + _seccomp(where, sc, required=False)


def restricted_violations(pod: dict[str, Any], *, partial: bool = False,
                          prefix: str = "spec") -> list[str]:
    """Every way ``pod`` (a pod spec) breaks the restricted standard, as ``path: rule``."""
    psc = pod.get("securityContext") or {}
    errors = _identity(f"{prefix}.securityContext", psc)
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type") in ALLOWED_SECCOMP
    errors += _seccomp(f"{prefix}.securityContext", psc, required=False)
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            errors.append(f"{prefix}.{host}: must not be true")
    for i, volume in enumerate(pod.get("volumes") or []):
        kinds = set(volume) - {"name"}
        if bad := kinds - RESTRICTED_VOLUME_TYPES:
            errors.append(f"{prefix}.volumes[{i}]: volume type {sorted(bad)} is not allowed "
                          f"(use {', '.join(sorted(RESTRICTED_VOLUME_TYPES))})")
    for key in ("initContainers", "containers"):
        for i, box in enumerate(pod.get(key) or []):
            where = f"{prefix}.{key}[{i}]"
            errors += _container(where, box, psc.get("runAsNonRoot") is True, partial)
            sc = box.get("securityContext") or {}
            if not partial and not pod_seccomp and (sc.get("seccompProfile") or {}).get(
                    "type") not in ALLOWED_SECCOMP:
                errors.append(f"{where}.securityContext.seccompProfile.type: must be "
                              f"RuntimeDefault or Localhost (here or on the pod)")
    return errors
