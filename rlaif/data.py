"""The prompts file: one JSON object a line, ``{"text": ..., "labels": {...}}``.

The labeller writes it, ``rlaif validate``-style checks and the trainer read it. A line
the labeller could not label is kept as ``{"text": ..., "labels": null, "error": why}``
so reruns skip it knowingly; the trainer leaves such lines out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.api.labels import DIMENSIONS, LabelSchema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    text: str
    labels: dict[str, str] = field(default_factory=dict)


class PromptFileError(ValueError):
    """A malformed prompts file; the message names file and line."""


def parse_prompt_line(line: str, schema: LabelSchema) -> Prompt | None:
    """One line -> Prompt (labels in the schema's spelling), None for an unlabelled record."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
        raise ValueError('expected an object with a non-empty "text"')
    if obj.get("labels") is None:
        if "error" in obj:
            return None
        raise ValueError('"labels" is missing')
    labels = obj["labels"]
    if not isinstance(labels, dict):
        raise ValueError('"labels" must be an object')
    if errors := schema.label_errors(labels):
        raise ValueError("labels." + "; labels.".join(errors))
    missing = [d for d in DIMENSIONS if d not in labels]
    if missing:
        raise ValueError(f"labels: missing {', '.join(missing)}")
    canonical = {d: schema.canonical(d, labels[d]) or "" for d in DIMENSIONS}
    return Prompt(obj["text"].strip(), canonical)


def load_prompts(path: Path, schema: LabelSchema | None = None) -> list[Prompt]:
    """Every labelled prompt in ``path``; raises PromptFileError naming the first bad line."""
    schema = schema or LabelSchema()
    prompts, skipped = [], 0
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read prompts: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            prompt = parse_prompt_line(line, schema)
        except ValueError as exc:
            raise PromptFileError(f"{path}:{number}: {exc}") from None
        if prompt is None:
            skipped += 1
        else:
            prompts.append(prompt)
    if skipped:
        log.warning("%s: skipped %d unlabelled line(s)", path, skipped)
    if not prompts:
        raise PromptFileError(f"{path}: no labelled prompts")
    return prompts
