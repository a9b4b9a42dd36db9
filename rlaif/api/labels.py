"""The prosody label schema shared by the labeller, the data loader and the judges.

Defaults are RLAIF-SPA's labeller lists. The paper's judge used different lists, so
some targets could never match; here one schema serves every stage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import Field, ValidationError, model_validator

from rlaif.api.base import Model

Dimension = Literal["structure", "emotion", "speechRate", "intonation"]
DIMENSIONS: tuple[Dimension, ...] = get_args(Dimension)

PAPER_STRUCTURE = [
    "Introduction", "Background", "Argument", "Conclusion", "Transition", "Example",
    "Problem Statement", "Methodology", "Data Analysis", "Summary", "Greeting/Introduction",
    "Request/Proposal", "Statement", "Question", "Exclamation/Reaction",
    "Advice/Recommendation", "Clarification", "Farewell", "Complaint", "Apology",
]  # fmt: skip
PAPER_EMOTION = [
    "Positive", "Negative", "Neutral", "Excited", "Worried", "Desperate", "Angry",
    "Expectant", "Confused", "Optimistic",
]  # fmt: skip
PAPER_SPEECH_RATE = ["Extremely Slow", "Slow", "Medium Slow", "Medium Fast", "Extremely Fast"]
PAPER_INTONATION = [
    "Declarative", "Interrogative", "Imperative", "Exclamation", "Rhetorical Question", "Command",
]  # fmt: skip

# Keys an LLM may use for each dimension in a JSON answer, compared lower-case without spaces,
# "_" or "-" (RLAIF-SPA's judge answered with "Speech Speed" and "Tone").
ANSWER_KEYS = {
    "structure": ("structure",),
    "emotion": ("emotion",),
    "speechRate": ("speechrate", "speechspeed"),
    "intonation": ("intonation", "tone"),
}


class LabelSchema(Model):
    """Allowed values per label dimension. Order matters for speechRate: slowest first."""

    structure: list[str] = Field(
        default_factory=lambda: list(PAPER_STRUCTURE), min_length=1,
        description="Discourse role of the sentence (drives pauses between phrases).",
    )
    emotion: list[str] = Field(
        default_factory=lambda: list(PAPER_EMOTION), min_length=1,
        description="Emotion the sentence should be spoken with.",
    )
    speech_rate: list[str] = Field(
        default_factory=lambda: list(PAPER_SPEECH_RATE), min_length=2,
        description="Speaking-rate classes, ordered from slowest to fastest.",
    )
    intonation: list[str] = Field(
        default_factory=lambda: list(PAPER_INTONATION), min_length=1,
        description="Sentence tone; question-like values imply a rising ending.",
    )

    @model_validator(mode="after")
    def _unique_values(self) -> LabelSchema:
        for dim in DIMENSIONS:
            values = self.values(dim)
            lowered = [v.lower() for v in values]
            if len(set(lowered)) != len(lowered):
                raise ValueError(f"{dim}: values must be unique (case-insensitive)")
        return self

    def values(self, dimension: str) -> list[str]:
        """The allowed values of one dimension, by its wire name (e.g. ``speechRate``)."""
        return {
            "structure": self.structure,
            "emotion": self.emotion,
            "speechRate": self.speech_rate,
            "intonation": self.intonation,
        }[dimension]

    def canonical(self, dimension: str, value: str) -> str | None:
        """The schema's spelling of ``value`` (case- and space-insensitive), or None if off-list."""
        key = " ".join(str(value).split()).lower()
        for allowed in self.values(dimension):
            if allowed.lower() == key:
                return allowed
        return None

    def label_errors(self, labels: dict[str, object]) -> list[str]:
        """Messages for unknown dimensions or off-list values; empty when ``labels`` is valid."""
        errors = [f"{k}: unknown label dimension (allowed: {', '.join(DIMENSIONS)})"
                  for k in labels if k not in DIMENSIONS]
        for dim in DIMENSIONS:
            if dim in labels and (not isinstance(labels[dim], str)
                                  or self.canonical(dim, labels[dim]) is None):  # type: ignore[arg-type]
                errors.append(f"{dim}: {labels[dim]!r} is not one of {self.values(dim)}")
        return errors

    def describe(self, dimensions: tuple[str, ...] = DIMENSIONS) -> str:
        """The allowed values as prompt text, one line per dimension, so every LLM prompt
        (labeller and judge alike) lists exactly this schema."""
        return "\n".join(f'- "{dim}": one of {json.dumps(self.values(dim))}' for dim in dimensions)

    def parse_answer(self, answer: str) -> tuple[dict[str, str], list[str]]:
        """Labels from an LLM's answer (schema spelling) and what was wrong with the rest.

        The first JSON object in ``answer`` is used (models wrap it in prose or code fences);
        an answer with no JSON at all may use "Name: value" lines (RLAIF-SPA's "1. Structure:
        X" form); broken JSON is reported as such, not read as lines.
        Off-list values are reported, never mapped to a nearby value.
        """
        obj = first_json_object(answer) or ({} if "{" in answer else answer_lines(answer))
        if not obj:
            return {}, [f"no JSON object (or 'Name: value' lines) in the answer: "
                        f"{answer[:80]!r}"]
        keys = {re.sub(r"[\s_-]", "", str(k)).lower(): k for k in obj}
        labels: dict[str, str] = {}
        errors: list[str] = []
        for dim in DIMENSIONS:
            key = next((keys[a] for a in ANSWER_KEYS[dim] if a in keys), None)
            if key is None:
                errors.append(f"{dim}: missing")
            elif isinstance(obj[key], str) and (value := self.canonical(dim, obj[key])):
                labels[dim] = value
            else:
                errors.append(f"{dim}: {obj[key]!r} is not an allowed value")
        return labels, errors

    @classmethod
    def from_file(cls, path: Path) -> LabelSchema:
        """A schema from a YAML or JSON file; ValueError naming the file and field otherwise."""
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ValueError(f"{path}: cannot read label schema: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not YAML/JSON: {exc}") from None
        try:
            return cls.model_validate(data if data is not None else {})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(part) for part in err["loc"]) or "(top level)"
            raise ValueError(f"{path}: {where}: {err['msg']}") from None


# No lazy group before an optional tail: the match stays linear in the line's length.
_ANSWER_LINE = re.compile(r"^\W*(?:\d+\s*[.)]\s*)?([A-Za-z][A-Za-z _-]*)[:=](.+)$")


def answer_lines(text: str) -> dict[str, str]:
    """"Name: value" lines of ``text`` whose name is a label dimension (numbering, quotes and
    punctuation dropped)."""
    known = {alias for aliases in ANSWER_KEYS.values() for alias in aliases}
    return {m.group(1).strip(): _answer_value(m.group(2)) for line in text.splitlines()
            if (m := _ANSWER_LINE.match(line.strip()))
            and re.sub(r"[\s_-]", "", m.group(1)).lower() in known}


def _answer_value(raw: str) -> str:
    """The value with trailing punctuation, surrounding spaces and quotes dropped."""
    end = len(raw)
    while end and not (raw[end - 1].isalnum() or raw[end - 1] == "_"):
        end -= 1
    return raw[:end].strip(" \"'")


def first_json_object(text: str) -> dict | None:
    """The first JSON object embedded in ``text``, or None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        except RecursionError:  # nested past any answer's shape: nothing usable in it
            return None
        if isinstance(obj, dict):
            return obj
    return None
