"""Manifest validation: pydantic for fields, plain functions for cross-field rules.

Every error carries the field path (``spec.rewards[1].weight``) so a user can fix it.
Files are read by a hardened YAML loader: libyaml (fast), dates kept as strings (as
Kubernetes reads them), bounded nesting and alias expansion (no "billion laughs"), and
every decoding or construction failure reported with its file and line, never raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import ConstructorError
from yaml.error import MarkedYAMLError
from yaml.nodes import CollectionNode, MappingNode, Node

from rlaif import modelref
from rlaif.api.models import (
    AUTOREGRESSIVE_POLICIES,
    DIFFUSION_POLICIES,
    KINDS,
    RewardServer,
    RewardSpec,
    RLAIFJob,
    RLAIFJobSpec,
)

MAX_NESTING = 64
"""Deepest YAML nesting accepted (real manifests stay under 15 levels)."""
MAX_ALIAS_NODES = 10_000
"""Nodes that aliases may add when expanded; past it the file is refused as an alias bomb."""
BUILTIN_REWARD_KINDS = {"builtin:whisper-tiny.en": "asr", "builtin:dnsmos": "mos",
                        "builtin:acoustic": "judge"}
"""The reward kind each built-in reward model serves (the others are policies)."""


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
        errors += _served_errors(path, reward)
    errors += _evaluation_errors(spec)
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
    if policy.kind != "codec-lm" and policy.label_instruction:
        errors.append(FieldError("spec.policy.labelInstruction",
                                 f"only used by codec-lm, not {policy.kind}"))
    for field, ref in (("model", policy.model), ("codec", policy.codec)):
        if ref is not None and (err := modelref.reference_error(ref) or (
                f"{ref} is a reward model (kind {BUILTIN_REWARD_KINDS[ref]}), not a policy"
                if ref in BUILTIN_REWARD_KINDS else None)):
            errors.append(FieldError(f"spec.policy.{field}", err))
    if (spec.algorithm == "dlpo" and spec.dlpo.objective == "dlpo"
            and spec.dlpo.diffusion_loss_coef > 0 and not spec.data.ground_truth):
        errors.append(FieldError("spec.data.groundTruth", "dlpo's diffusion loss needs "
                                 "ground-truth text/audio pairs (or set diffusionLossCoef: 0)"))
    if spec.algorithm == "dlpo" and spec.grpo.async_rollouts:
        errors.append(FieldError("spec.grpo.asyncRollouts", "one-step-off rollouts are for grpo "
                                 "only; dlpo trains on-policy (remove it or set 0)"))
    if (spec.grpo.clip_epsilon_high is not None
            and spec.grpo.clip_epsilon_high < spec.grpo.clip_epsilon):
        errors.append(FieldError("spec.grpo.clipEpsilonHigh", "must be >= clipEpsilon"))
    return errors


def model_kind_error(kind: str | None, model: str) -> str | None:
    """A built-in model used for a reward kind it does not serve (``kind: asr`` with
    ``builtin:dnsmos``); directories are checked by ``reward_dir_error`` (--check-paths)."""
    if kind is None or not modelref.is_builtin(model):
        return None
    served = BUILTIN_REWARD_KINDS.get(model)
    if served is None:
        return f"{model} is a policy model, not a reward model of kind {kind}"
    if served != kind:
        return f"{model} serves kind {served}, not {kind} (set kind: {served})"
    return None


REWARD_DIR_FILES = {"asr": ("model.bin",), "mos": ("sig_bak_ovr.onnx",
                                                   "dnsmos_models/sig_bak_ovr.onnx"),
                    "judge": ("config.json",), "speaker": ("config.json",)}
"""A file that a model directory of each reward kind holds (one of them)."""


def reward_dir_error(kind: str, directory: Path) -> str | None:
    if any((directory / name).is_file() for name in REWARD_DIR_FILES[kind]):
        return None
    return (f"model directory '{directory}' has no {' or '.join(REWARD_DIR_FILES[kind])}: "
            f"not a model of kind {kind}")


def server_rule_errors(server: RewardServer) -> list[FieldError]:
    if not server.spec.model_is_directory:
        return []  # a served judge's model is a name at its endpoint
    err = (modelref.reference_error(server.spec.model)
           or model_kind_error(server.spec.kind, server.spec.model))
    return [FieldError("spec.model", err)] if err else []


def _served_errors(path: str, reward: RewardSpec) -> list[FieldError]:
    """A reward or evaluator has a server of its own (kind + model) or a serverRef."""
    errors = []
    own = reward.kind is not None or reward.model is not None
    if reward.server_ref is not None and own:
        errors.append(FieldError(path, "set either kind+model or serverRef, not both"))
    elif reward.server_ref is None:
        if reward.kind is None:
            errors.append(FieldError(f"{path}.kind", "required unless serverRef is set"))
        if reward.model is None:
            errors.append(FieldError(f"{path}.model", "required unless serverRef is set"))
    if reward.model is not None and reward.model_is_directory and (
            err := modelref.reference_error(reward.model)
            or model_kind_error(reward.kind, reward.model)):
        errors.append(FieldError(f"{path}.model", err))
    return errors


def _evaluation_errors(spec: RLAIFJobSpec) -> list[FieldError]:
    """spec.evaluation names only rewards, evaluators and metrics that exist."""
    ev, path = spec.evaluation, "spec.evaluation"
    if ev is None:
        return []
    training = [r.name for r in spec.rewards]
    errors = [FieldError(f"{path}.rewards[{i}]", f"no reward named {name!r} in spec.rewards "
                         f"(have: {', '.join(training)})")
              for i, name in enumerate(ev.rewards or []) if name not in training]
    seen = set(training)
    for i, evaluator in enumerate(ev.evaluators):
        if evaluator.name in seen:
            errors.append(FieldError(f"{path}.evaluators[{i}].name", f"{evaluator.name!r} is "
                                     f"already the name of a reward or evaluator"))
        seen.add(evaluator.name)
        errors += _served_errors(f"{path}.evaluators[{i}]", evaluator)
    metrics = ev.metric_names(training)
    named = [(f"{path}.bestMetric", ev.best_metric)]
    named += [(f"{path}.guard.minimum.{m}", m) for m in ev.guard.minimum]
    named += [(f"{path}.guard.divergence[{i}].metric", r.metric)
              for i, r in enumerate(ev.guard.divergence)]
    errors += [FieldError(field, f"no held-out metric {name!r} (have: {', '.join(metrics)})")
               for field, name in named if name not in metrics]
    if ev.sampling == "greedy" and ev.samples_per_prompt > 1:
        errors.append(FieldError(f"{path}.samplesPerPrompt", "greedy decoding gives one "
                                 "sample per prompt; use sampling: sampled or set 1"))
    return errors


def path_errors(obj: RLAIFJob | RewardServer) -> list[FieldError]:
    """Model directories that do not exist on this machine, or do not hold a model of their
    reward's kind (for ``rlaif run`` and ``rlaif validate --check-paths``)."""
    refs: list[tuple[str, str, str | None]] = []
    if isinstance(obj, RewardServer):
        if obj.spec.model_is_directory:
            refs.append(("spec.model", obj.spec.model, obj.spec.kind))
    else:
        refs.append(("spec.policy.model", obj.spec.policy.model, None))
        if obj.spec.policy.codec:
            refs.append(("spec.policy.codec", obj.spec.policy.codec, None))
        refs += [(f"spec.rewards[{i}].model", r.model, r.kind)
                 for i, r in enumerate(obj.spec.rewards) if r.model and r.model_is_directory]
        evaluators = obj.spec.evaluation.evaluators if obj.spec.evaluation else []
        refs += [(f"spec.evaluation.evaluators[{i}].model", e.model, e.kind)
                 for i, e in enumerate(evaluators) if e.model and e.model_is_directory]
    errors = []
    for path, ref, kind in refs:
        try:
            directory = modelref.resolve(ref)
        except modelref.ModelNotFound as exc:
            errors.append(FieldError(path, str(exc)))
            continue
        if kind is not None and not modelref.is_builtin(ref) and (
                err := reward_dir_error(kind, directory)):
            errors.append(FieldError(path, err))
    return errors


def parse_object(doc: Any, *, check_paths: bool = False) -> RLAIFJob | RewardServer:
    """Validate one manifest document; raises InvalidManifest('', errors)."""
    if not isinstance(doc, dict):
        raise InvalidManifest("", [FieldError("", "a manifest must be a YAML mapping")])
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidManifest("", [FieldError("kind", f"must be one of {sorted(KINDS)}, "
                                              f"got {kind!r:.60}")])
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


class _ManifestLoader(yaml.CSafeLoader):
    """libyaml's safe loader; construction errors (``!!int abc``, a 5,000-digit number,
    ``!!bool maybe``) become YAML errors that carry the node's line."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            tag = str(node.tag).rsplit(":", 1)[-1]
            raise ConstructorError(None, None, f"cannot read {str(node.value)[:40]!r} as {tag} "
                                   f"({type(exc).__name__}: {str(exc)[:80]})",
                                   node.start_mark) from None


# YAML 1.1 reads 2024-01-01 as a date (and fails on 2024-13-01); Kubernetes keeps strings.
_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()}


def _check_shape(root: Node) -> None:
    """Refuse nesting deeper than MAX_NESTING and aliases that expand to more than
    MAX_ALIAS_NODES extra nodes (or into themselves), before anything is constructed."""
    unique: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in unique:
            unique.add(id(node))
            stack.extend(_children(node))
    budget = len(unique) + MAX_ALIAS_NODES
    walk = [(root, 1)]
    while walk:
        node, depth = walk.pop()
        if depth > MAX_NESTING:
            raise MarkedYAMLError(problem=f"nested more than {MAX_NESTING} levels deep",
                                  problem_mark=node.start_mark)
        budget -= 1
        if budget < 0:
            raise MarkedYAMLError(problem=f"aliases expand to more than {MAX_ALIAS_NODES} "
                                  f"extra nodes (an alias bomb?)", problem_mark=node.start_mark)
        walk.extend((child, depth + 1) for child in _children(node))


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, CollectionNode) else []


def _parse_yaml(text: str) -> list[Any]:
    loader = _ManifestLoader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                _check_shape(node)
                documents.append(loader.construct_document(node))
        return documents
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidManifest("", [FieldError(str(path), f"cannot read: {exc.strerror}")]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidManifest("", [FieldError(str(path), f"line {line}: not UTF-8 text (byte "
                                              f"{data[exc.start]:#04x} at offset {exc.start})")]
                              ) from None


def load_documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(label, document) for each non-empty YAML document; syntax errors name file and line,
    and a file with no document at all is an error too."""
    text = _read_text(path)
    try:
        docs = [d for d in _parse_yaml(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidManifest("", [FieldError(str(path), f"{where}YAML error: {problem}")]
                              ) from None
    if not docs:
        raise InvalidManifest("", [FieldError(str(path), "no manifest: the file is empty or "
                                              "only comments")])
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

