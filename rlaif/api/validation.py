"""Manifest validation: pydantic for fields, plain functions for cross-field rules.

Every error carries the field path (``spec.rewards[1].weight``) so a user can fix it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlaif import modelref
from rlaif.api.models import (
    AUTOREGRESSIVE_POLICIES,
    DIFFUSION_POLICIES,
    KINDS,
    RewardServer,
    RLAIFJob,
)


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidManifest(ValueError):
    """A manifest that failed validation; ``errors`` has every problem found."""

    def __init__(self, source: str, errors: list[FieldError]):
        self.source, self.errors = source, errors
        super().__init__("\n".join(f"{source}: {e}" for e in errors))


def format_loc(loc: tuple[int | str, ...]) -> str:
    """('spec', 'rewards', 1, 'weight') -> 'spec.rewards[1].weight'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_MESSAGES = {
    "missing": lambda e: "required field is missing",
    "extra_forbidden": lambda e: "unknown field",
    "greater_than": lambda e: f"must be greater than {e['ctx']['gt']}",
    "greater_than_equal": lambda e: f"must be at least {e['ctx']['ge']}",
    "less_than": lambda e: f"must be less than {e['ctx']['lt']}",
    "less_than_equal": lambda e: f"must be at most {e['ctx']['le']}",
}


def _message(err: Any) -> str:
    if err["type"] in _MESSAGES:
        return _MESSAGES[err["type"]](err)
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    return msg.replace("Input should be", "must be").replace("String should", "must")


def pydantic_errors(exc: ValidationError) -> list[FieldError]:
    return [FieldError(format_loc(e["loc"]), _message(e)) for e in exc.errors()]


def job_rule_errors(job: RLAIFJob) -> list[FieldError]:
    """Cross-field rules of an RLAIFJob that single-field validation cannot express."""
    spec, errors = job.spec, []
    seen: set[str] = set()
    for i, reward in enumerate(spec.rewards):
        path = f"spec.rewards[{i}]"
        if reward.name in seen:
            errors.append(FieldError(f"{path}.name", f"duplicate reward name {reward.name!r}"))
        seen.add(reward.name)
        own = reward.kind is not None or reward.model is not None
        if reward.server_ref is not None and own:
            errors.append(FieldError(path, "set either kind+model or serverRef, not both"))
        elif reward.server_ref is None:
            if reward.kind is None:
                errors.append(FieldError(f"{path}.kind", "required unless serverRef is set"))
            if reward.model is None:
                errors.append(FieldError(f"{path}.model", "required unless serverRef is set"))
        if reward.model is not None and (err := modelref.reference_error(reward.model)):
            errors.append(FieldError(f"{path}.model", err))
    policy = spec.policy
    if spec.algorithm == "grpo" and policy.kind not in AUTOREGRESSIVE_POLICIES:
        errors.append(FieldError("spec.policy.kind", f"grpo needs an autoregressive policy "
                                 f"({', '.join(AUTOREGRESSIVE_POLICIES)}), got {policy.kind!r}"))
    if spec.algorithm == "dlpo" and policy.kind not in DIFFUSION_POLICIES:
        errors.append(FieldError("spec.policy.kind", f"dlpo needs a diffusion policy "
                                 f"({', '.join(DIFFUSION_POLICIES)}), got {policy.kind!r}"))
    if policy.kind == "codec-lm" and not policy.codec:
        errors.append(FieldError("spec.policy.codec", "required for codec-lm"))
    if policy.kind != "codec-lm" and policy.codec:
        errors.append(FieldError("spec.policy.codec", f"only used by codec-lm, not {policy.kind}"))
    for field, ref in (("model", policy.model), ("codec", policy.codec)):
        if ref is not None and (err := modelref.reference_error(ref)):
            errors.append(FieldError(f"spec.policy.{field}", err))
    if (spec.algorithm == "dlpo" and spec.dlpo.objective == "dlpo"
            and spec.dlpo.diffusion_loss_coef > 0 and not spec.data.ground_truth):
        errors.append(FieldError("spec.data.groundTruth", "dlpo's diffusion loss needs "
                                 "ground-truth text/audio pairs (or set diffusionLossCoef: 0)"))
    if (spec.grpo.clip_epsilon_high is not None
            and spec.grpo.clip_epsilon_high < spec.grpo.clip_epsilon):
        errors.append(FieldError("spec.grpo.clipEpsilonHigh", "must be >= clipEpsilon"))
    return errors


def server_rule_errors(server: RewardServer) -> list[FieldError]:
    err = modelref.reference_error(server.spec.model)
    return [FieldError("spec.model", err)] if err else []


def path_errors(obj: RLAIFJob | RewardServer) -> list[FieldError]:
    """Model directories that do not exist on this machine (for ``rlaif run``)."""
    refs: list[tuple[str, str]] = []
    if isinstance(obj, RewardServer):
        refs.append(("spec.model", obj.spec.model))
    else:
        refs.append(("spec.policy.model", obj.spec.policy.model))
        if obj.spec.policy.codec:
            refs.append(("spec.policy.codec", obj.spec.policy.codec))
        refs += [(f"spec.rewards[{i}].model", r.model)
                 for i, r in enumerate(obj.spec.rewards) if r.model]
    errors = []
    for path, ref in refs:
        try:
            modelref.resolve(ref)
        except modelref.ModelNotFound as exc:
            errors.append(FieldError(path, str(exc)))
    return errors


def parse_object(doc: Any, *, check_paths: bool = False) -> RLAIFJob | RewardServer:
    """Validate one manifest document; raises InvalidManifest('', errors)."""
    if not isinstance(doc, dict):
        raise InvalidManifest("", [FieldError("", "a manifest must be a YAML mapping")])
    kind = doc.get("kind")
    if kind not in KINDS:
        raise InvalidManifest("", [FieldError("kind", f"must be one of {sorted(KINDS)}, "
                                              f"got {kind!r}")])
    try:
        obj = KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        raise InvalidManifest("", pydantic_errors(exc)) from None
    errors = (job_rule_errors(obj) if isinstance(obj, RLAIFJob) else server_rule_errors(obj))
    if check_paths and not errors:
        errors = path_errors(obj)
    if errors:
        raise InvalidManifest("", errors)
    return obj


def load_documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(label, document) for each non-empty YAML document; syntax errors name file and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidManifest("", [FieldError(str(path), f"cannot read: {exc.strerror}")]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidManifest("", [FieldError(str(path), f"{where}YAML syntax error: {problem}")]
                              ) from None
    for i, doc in enumerate(docs):
        yield (str(path) if len(docs) == 1 else f"{path}#{i + 1}"), doc


def load_file(path: Path, *, check_paths: bool = False) -> list[RLAIFJob | RewardServer]:
    """Every object in a manifest file, validated; raises InvalidManifest with all errors."""
    objects, errors = [], []
    for label, doc in load_documents(path):
        try:
            objects.append(parse_object(doc, check_paths=check_paths))
        except InvalidManifest as exc:
            errors += [FieldError(f"{label}: {e.path}" if e.path else label, e.message)
                       for e in exc.errors]
    if errors:
        raise InvalidManifest("", errors)
    return objects


def load_job(path: Path, *, check_paths: bool = False) -> RLAIFJob:
    """The single RLAIFJob in ``path`` (what ``rlaif run`` takes)."""
    jobs = [o for o in load_file(path, check_paths=check_paths) if isinstance(o, RLAIFJob)]
    if len(jobs) != 1:
        raise InvalidManifest("", [FieldError(str(path), f"expected exactly one RLAIFJob, "
                                              f"found {len(jobs)}")])
    return jobs[0]

