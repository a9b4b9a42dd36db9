"""CustomResourceDefinitions generated from the API models (``rlaif crd``).

Pydantic's JSON Schema is turned into a structural OpenAPI v3 schema: references
inlined, ``anyOf [X, null]`` folded into ``nullable``, passthrough Kubernetes objects
marked ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rlaif import constants as c
from rlaif.api.models import RewardServerSpec, RewardServerStatus, RLAIFJobSpec, RLAIFJobStatus

_KEEP = {"type", "description", "enum", "pattern", "minimum", "maximum", "minLength",
         "maxLength", "minItems", "maxItems", "items", "properties", "required",
         "additionalProperties", "format", "default", "nullable"}


def _structural(node: Any, defs: dict[str, Any], in_status: bool) -> dict[str, Any]:
    """One JSON Schema node -> its structural OpenAPI v3 equivalent."""
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs, in_status)
    node = dict(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {options} in a structural schema")
        inner = _structural(options[0], defs, in_status)
        extra = {k: v for k, v in node.items() if k == "description" or k.startswith("x-")}
        default = node.get("default")
        if default is not None and not in_status and not isinstance(default, dict):
            extra["default"] = default
        return {**inner, **extra, "nullable": True}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "exclusiveMinimum" in node:
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    out = {k: v for k, v in node.items()
           if k in _KEEP or k in ("exclusiveMinimum", "exclusiveMaximum") or k.startswith("x-")}
    if out.get("default") is None or in_status or isinstance(out.get("default"), dict):
        out.pop("default", None)
    if "properties" in out:
        out["properties"] = {k: _structural(v, defs, in_status)
                             for k, v in out["properties"].items()}
        out.pop("additionalProperties", None)  # unknown fields are pruned by the API server
        out["type"] = "object"
    elif out.get("type") == "object":
        extra = out.pop("additionalProperties", True)
        if extra is True or extra == {}:
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            out["additionalProperties"] = _structural(extra, defs, in_status)
    if "items" in out:
        out["items"] = _structural(out["items"], defs, in_status)
    return out


def _schema(model: type, in_status: bool = False) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)  # type: ignore[attr-defined]
    return _structural(raw, raw.get("$defs", {}), in_status)


def _crd(kind: str, plural: str, singular: str, short: str, doc: str, spec: type, status: type,
         columns: list[dict[str, Any]], scale: dict[str, str] | None = None) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if scale:
        subresources["scale"] = scale
    root = {
        "type": "object",
        "description": doc,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _schema(spec),
            "status": _schema(status, in_status=True),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{c.GROUP}",
                     "labels": {c.LABEL_PART_OF: c.PART_OF}},
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": singular,
                      "shortNames": [short], "categories": [c.CATEGORY]},
            "versions": [{
                "name": c.VERSION, "served": True, "storage": True,
                "subresources": subresources,
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def _column(name: str, path: str, type_: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, **extra}


def job_crd() -> dict[str, Any]:
    return _crd(c.JOB_KIND, c.JOB_PLURAL, c.JOB_SINGULAR, c.JOB_SHORT,
                "A reinforcement-learning-from-AI-feedback run for a TTS policy.", RLAIFJobSpec,
                RLAIFJobStatus, [
                    _column("Phase", ".status.phase"),
                    _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
                    _column("Reason", '.status.conditions[?(@.type=="Ready")].reason',
                            priority=1),
                    _column("Step", ".status.step", "integer"),
                    _column("Total", ".status.totalSteps", "integer", priority=1),
                    _column("Reward", ".status.metrics.reward", "number"),
                    _column("Held-Out", ".status.evaluation.score", "number", priority=1),
                    _column("Rewards-Ready",
                            '.status.conditions[?(@.type=="RewardsReady")].status'),
                    _column("Restarts", ".status.restarts", "integer", priority=1),
                    _column("Message", '.status.conditions[?(@.type=="Ready")].message',
                            priority=1),
                    _column("Age", ".metadata.creationTimestamp", "date"),
                ])


def server_crd() -> dict[str, Any]:
    return _crd(c.SERVER_KIND, c.SERVER_PLURAL, c.SERVER_SINGULAR, c.SERVER_SHORT,
                "A scalable reward-model server that jobs own or share.",
                RewardServerSpec, RewardServerStatus, [
                    _column("Kind", ".spec.kind"),
                    _column("Replicas", ".spec.replicas", "integer"),
                    _column("Ready", ".status.readyReplicas", "integer"),
                    _column("Endpoint", ".status.endpoint", priority=1),
                    _column("Age", ".metadata.creationTimestamp", "date"),
                ],
                scale={"specReplicasPath": ".spec.replicas",
                       "statusReplicasPath": ".status.replicas",
                       "labelSelectorPath": ".status.selector"})


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, in the layout committed under manifests/crds and the chart."""
    return {f"{c.GROUP}_{c.JOB_PLURAL}.yaml": job_crd(),
            f"{c.GROUP}_{c.SERVER_PLURAL}.yaml": server_crd()}


HEADER = "# Generated by `rlaif crd` from rlaif/api/models.py. Do not edit.\n"


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in all_crds().items():
        (out / name).write_text(render(crd))
        written.append(out / name)
    return written
