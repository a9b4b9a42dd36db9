"""The prosody label schema shared by the labeller, the data loader and the judges.

Defaults are RLAIF-SPA's labeller lists. The paper's judge used different lists, so
some targets could never match; here one schema serves every stage.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from rlaif.api.base import Model

DIMENSIONS = ("structure", "emotion", "speechRate", "intonation")

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
