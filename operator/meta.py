"""Metadata and pod-security pieces shared by every child the operator builds.

Every pod passes the Kubernetes "restricted" Pod Security Standard: non-root, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp, and a read-only root
filesystem with an emptyDir mounted at /tmp for scratch space.
"""

from __future__ import annotations

import hashlib
from typing import Any

from rlaif import __version__
from rlaif import constants as c

Manifest = dict[str, Any]

SCRATCH_VOLUME = "scratch"
NONROOT_UID = 10001
"""The uid of the non-root user created in the Dockerfile."""

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""Copied from an RLAIFJob to its trainer Job so Kueue can admit the gang."""


def child_name(parent: str, suffix: str, limit: int = 63) -> str:
    """``parent-suffix`` within ``limit`` characters; long parents are cut and hashed."""
    name = f"{parent}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(parent.encode()).hexdigest()[:6]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{parent[:keep].rstrip('-')}-{digest}-{suffix}"


def labels(component: str, instance: str, **extra: str) -> dict[str, str]:
    """The standard app.kubernetes.io labels plus any rlaif.dev ones."""
    return {
        c.LABEL_NAME: "rlaif",
        c.LABEL_INSTANCE: instance,
        c.LABEL_COMPONENT: component,
        c.LABEL_PART_OF: c.PART_OF,
        c.LABEL_MANAGED_BY: c.PART_OF,
        "app.kubernetes.io/version": __version__,
        **extra,
    }


def selector(component: str, instance: str) -> dict[str, str]:
    """The stable subset of ``labels`` used in selectors (never includes the version)."""
    return {c.LABEL_INSTANCE: instance, c.LABEL_COMPONENT: component}


def metadata(name: str, namespace: str | None, lbls: dict[str, str]) -> Manifest:
    meta: Manifest = {"name": name, "labels": lbls}
    if namespace:
        meta["namespace"] = namespace
    return meta


def owner_reference(owner: Manifest) -> Manifest:
    """A controller ownerReference to ``owner`` (so deleting it garbage-collects the child)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned(child: Manifest, owner: Manifest) -> Manifest:
    """``child`` in ``owner``'s namespace with a controller reference to it."""
    child["metadata"]["namespace"] = owner["metadata"].get("namespace")
    child["metadata"]["ownerReferences"] = [owner_reference(owner)]
    return child


def pod_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "fsGroup": NONROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_volume() -> Manifest:
    return {"name": SCRATCH_VOLUME, "emptyDir": {}}


def scratch_mount() -> Manifest:
    return {"name": SCRATCH_VOLUME, "mountPath": c.SCRATCH_DIR}


SCRATCH_ENV = [
    # Libraries write caches under $HOME; the root filesystem is read-only.
    {"name": "HOME", "value": c.SCRATCH_DIR},
    {"name": "XDG_CACHE_HOME", "value": f"{c.SCRATCH_DIR}/.cache"},
    {"name": "TORCH_EXTENSIONS_DIR", "value": f"{c.SCRATCH_DIR}/torch_extensions"},
    {"name": "TRITON_CACHE_DIR", "value": f"{c.SCRATCH_DIR}/.triton"},
    {"name": "MPLCONFIGDIR", "value": f"{c.SCRATCH_DIR}/.matplotlib"},
]


def container(name: str, image: str, args: list[str], *, resources: Manifest | None = None,
              env: list[Manifest] | None = None, mounts: list[Manifest] | None = None,
              command: list[str] | None = None) -> Manifest:
    """A restricted-PSS container running ``rlaif ARGS`` with scratch space at /tmp."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command or ["rlaif"],
        "args": args,
        "env": [*SCRATCH_ENV, *(env or [])],
        "resources": dict(resources or {}),
        "volumeMounts": [scratch_mount(), *(mounts or [])],
        "securityContext": container_security_context(),
        # The last lines of output become the termination message the operator reports.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def pod_spec(containers: list[Manifest], volumes: list[Manifest], **extra: Any) -> Manifest:
    """A pod spec with the restricted security context and the scratch volume."""
    return {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": False,
        "containers": containers,
        "volumes": [scratch_volume(), *volumes],
        **extra,
    }
