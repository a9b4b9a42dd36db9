"""Counts per label value of a prompts file, so skewed data is visible before training.

RLAIF-SPA's own labelled set was about half Neutral and 70% Declarative with almost no
Slow; a policy trained on that learns little about the rare labels. Every allowed value
is listed, zero counts included, in the schema's order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rlaif.api.labels import DIMENSIONS, LabelSchema

TOP_REASONS = 10


@dataclass
class LabelSummary:
    labelled: int = 0
    counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {d: Counter() for d in DIMENSIONS})
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def unlabelled(self) -> int:
        return sum(self.reasons.values())


def summarize(records: list[dict[str, Any]]) -> LabelSummary:
    """Counts over records as ``output.read_records`` returns them."""
    summary = LabelSummary()
    for record in records:
        labels = record.get("labels")
        if labels is None:
            summary.reasons[str(record.get("error", "unknown"))] += 1
            continue
        summary.labelled += 1
        for dim in DIMENSIONS:
            summary.counts[dim][labels[dim]] += 1
    return summary


def format_summary(summary: LabelSummary, schema: LabelSchema) -> str:
    """A plain-text table: per dimension, count and share of every allowed value."""
    total = summary.labelled
    lines = [f"labelled: {total}, unlabelled: {summary.unlabelled}"]
    for dim in DIMENSIONS:
        lines.append(f"{dim}:")
        width = max(len(v) for v in schema.values(dim))
        for value in schema.values(dim):
            n = summary.counts[dim][value]
            share = f"{100 * n / total:5.1f}%" if total else "    -"
            lines.append(f"  {value:<{width}}  {n:6d}  {share}")
    if summary.reasons:
        lines.append("unlabelled, by reason:")
        for reason, n in summary.reasons.most_common(TOP_REASONS):
            lines.append(f"  {n:6d}  {reason[:160]}")
        if len(summary.reasons) > TOP_REASONS:
            lines.append(f"  ... and {len(summary.reasons) - TOP_REASONS} more reasons")
    return "\n".join(lines)
