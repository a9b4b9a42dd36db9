"""Metadata and pod-security pieces shared by every child the operator builds.

Every pod passes the Kubernetes "restricted" Pod Security Standard: non-root, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp, and a read-only root
filesystem with an emptyDir mounted at /tmp for scratch space.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rlaif import __version__
from rlaif import constants as c
from rlaif.api.models import PodTemplate

Manifest = dict[str, Any]

SCRATCH_VOLUME = "scratch"
NONROOT_UID = 10001
"""The uid of the non-root user created in the Dockerfile."""

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""Copied from an RLAIFJob to its trainer Job so Kueue can admit the gang."""


TEMPLATE_HASH_ANNOTATION = f"{c.GROUP}/template-hash"
"""On a Deployment: the hash of the pod template the operator built (drift check: the API
server adds defaults to stored templates, so comparing them field by field would flap)."""


def template_hash(template: Manifest) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


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


# --------------------------------------------------------------------------- pod overrides


def _merge_dicts(base: Manifest, over: Manifest) -> Manifest:
    """``over`` merged into ``base`` recursively (securityContext: override what is set)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge_dicts(out[key], value) \
            if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _merge_by(key: str, base: list[Manifest], over: list[Manifest]) -> list[Manifest]:
    """``base`` with items of ``over`` replacing those with the same ``key``, others added."""
    replaced = {item.get(key): item for item in over}
    kept = [replaced.pop(item.get(key), item) for item in base]
    return kept + [item for item in over if item.get(key) in replaced]


def _merge_container(box: Manifest, over: Manifest) -> Manifest:
    box = dict(box)
    if "image" in over:
        box["image"] = over["image"]
    box["env"] = _merge_by("name", box.get("env") or [], over.get("env") or [])
    if over.get("envFrom"):
        box["envFrom"] = [*(box.get("envFrom") or []), *over["envFrom"]]
    box["volumeMounts"] = _merge_by("mountPath", box.get("volumeMounts") or [],
                                    over.get("volumeMounts") or [])
    if "securityContext" in over:
        box["securityContext"] = _merge_dicts(box.get("securityContext") or {},
                                              over["securityContext"])
    return box


APPENDED = ("tolerations", "topologySpreadConstraints", "imagePullSecrets")
MERGED = ("nodeSelector", "securityContext")


def apply_pod_template(template: Manifest, override: PodTemplate | None) -> Manifest:
    """A built pod template (metadata + spec) with a user's ``PodTemplate`` merged over it.

    The operator's labels win (selectors depend on them); lists of tolerations, pull secrets
    and spread constraints are added to; env and volumes merge by name, mounts by path;
    security contexts merge field by field (validation has refused restricted-PSS breaches).
    """
    if override is None:
        return template
    over = override.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    meta_over, spec_over = over.get("metadata") or {}, dict(over.get("spec") or {})
    lbls = template.get("metadata", {}).get("labels") or {}
    out_meta = {**template.get("metadata", {}), "labels": {**meta_over.get("labels", {}), **lbls}}
    if annotations := {**(template.get("metadata", {}).get("annotations") or {}),
                       **meta_over.get("annotations", {})}:
        out_meta["annotations"] = annotations
    spec = dict(template["spec"])
    boxes = {b["name"]: b for b in spec_over.pop("containers", [])}
    spec["containers"] = [_merge_container(b, boxes[b["name"]]) if b["name"] in boxes else b
                          for b in spec["containers"]]
    spec["volumes"] = _merge_by("name", spec.get("volumes") or [], spec_over.pop("volumes", []))
    for key, value in spec_over.items():
        if key in APPENDED:
            spec[key] = [*(spec.get(key) or []), *value]
        elif key in MERGED:
            spec[key] = _merge_dicts(spec.get(key) or {}, value)
        else:
            spec[key] = value
    return {"metadata": out_meta, "spec": spec}


def drifted(have: Any, want: Any) -> bool:
    """Whether the stored ``have`` differs from what the operator sets (``want``), compared
    as the API server normalises: only the keys of ``want`` count (defaults added by the
    server are not drift), None means unset, and 1, 1.0 and "1" are equal (quantities and
    numbers come back in either form)."""
    if isinstance(want, dict):
        if have is None:
            return any(v is not None and v != {} for v in want.values())
        return not isinstance(have, dict) or any(
            _differs(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return not isinstance(have, list) or len(have) != len(want) or any(
            _differs(h, w) for h, w in zip(have, want, strict=True))
    if want is None or have is None or isinstance(want, bool) or isinstance(have, bool):
        return type(want) is not type(have) or bool(want != have)
    if isinstance(want, (int, float, str)) and isinstance(have, (int, float, str)):
        try:
            return float(want) != float(have)
        except ValueError:
            return str(want) != str(have)
    return bool(want != have)


_PLAIN = (str, int, float, bool, type(None))


def _differs(have: Any, want: Any) -> bool:
    """``drifted`` without a call per leaf: values of one plain type compare as they are (most
    of a spec's leaves; a reconciliation compares thousands of them)."""
    if have is want or (type(have) is type(want) and type(want) in _PLAIN and have == want):
        return False
    return drifted(have, want)
