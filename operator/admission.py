"""Spec checks shared by the admission webhook and its fallback (a condition on the job).

``algorithm`` and ``policy`` decide the trainer's model and maths, so they cannot change on
a running job; reward replicas and weights can (they apply live).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from rlaif import constants as c
from rlaif.api.models import RLAIFJob
from rlaif.api.validation import job_rule_errors, pydantic_errors

IMMUTABLE_FIELDS = ("algorithm", "policy")
WEBHOOK_ID = "validate-rlaifjob"
"""kopf serves the webhook at ``/<id>``: the path in the chart's ValidatingWebhookConfiguration."""
ACCEPTED_ANNOTATION = f"{c.GROUP}/accepted-immutable-spec"
"""The immutable fields the operator started the job with, kept for the fallback check."""


def parse_job(body: dict[str, Any]) -> tuple[RLAIFJob | None, list[str]]:
    """The validated job, or None and every error as ``spec.path: message``."""
    try:
        job = RLAIFJob.model_validate(manifest_part(body))
    except ValidationError as exc:
        return None, [str(e) for e in pydantic_errors(exc)]
    errors = [str(e) for e in job_rule_errors(job)]
    if job.spec.labeling is not None and not job.spec.labeling.input:
        errors.append("spec.labeling.input: required on a cluster (the texts the labelling Job "
                      "reads; the labelled prompts go to spec.data.prompts)")
    return (None, errors) if errors else (job, [])


def manifest_part(body: dict[str, Any]) -> dict[str, Any]:
    """The user-facing part of a stored object (status is the operator's own)."""
    return {k: v for k, v in dict(body).items() if k in ("apiVersion", "kind", "metadata", "spec")}


def immutable_part(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: spec.get(k) for k in IMMUTABLE_FIELDS}


def immutable_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Messages for each immutable field that differs, naming the field."""
    old, new = immutable_part(before), immutable_part(after)
    return [f"spec.{k}: cannot be changed on an existing RLAIFJob (was {json.dumps(old[k])}, "
            f"now {json.dumps(new[k])}); delete and recreate the job to change it"
            for k in IMMUTABLE_FIELDS if old[k] != new[k]]


def accepted_spec(body: dict[str, Any]) -> dict[str, Any] | None:
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(ACCEPTED_ANNOTATION)
    return json.loads(raw) if raw else None


def accepted_annotation(spec: dict[str, Any]) -> dict[str, str]:
    return {ACCEPTED_ANNOTATION: json.dumps(immutable_part(spec), sort_keys=True)}


def admission_errors(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What the validating webhook refuses: an invalid spec, or an immutable-field change."""
    _, errors = parse_job(new)
    if old is not None and old.get("spec"):
        errors += immutable_changes(old["spec"], new.get("spec") or {})
    return errors
