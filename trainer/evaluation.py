"""Held-out evaluation and the reward-hacking guard: pure functions over scores and rows.

A held-out evaluation scores samples of prompts the policy never trains on, with the
training rewards and with evaluators that are not part of the training reward. Every
evaluation uses the same prompts and the same seeds, so two evaluations (or the base and a
trained policy in ``rlaif eval``) are paired: their difference per prompt is the policy's.

The guard reads the evaluation rows (``kind: "eval"`` in metrics.jsonl) and fires when a
held-out metric falls under its floor, or falls by more than ``drop`` over ``K``
evaluations while the training reward rose over the same span: the policy is learning
what the reward pays for, not what it stands for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlaif.api.models import GuardSpec

Record = dict[str, Any]

EVAL_KIND = "eval"
"""``kind`` of an evaluation row in metrics.jsonl (training rows have no ``kind``)."""
PREFIX = "eval/"
"""Held-out figures are ``eval/<metric>`` in a row: ``eval/reward``, ``eval/intelligibility``,
``eval/intelligibility/wer``."""
TOTAL = "reward"
CONFIDENCE = 0.95


def sample_seed(seed: int, prompt_index: int) -> int:
    """The seed of one held-out prompt's samples: the same at every evaluation and on any
    number of ranks, so evaluations are paired prompt by prompt."""
    return seed * 1_000_003 + prompt_index


# --------------------------------------------------------------------------- scores


def heldout_scores(per_reward: Mapping[str, np.ndarray], weights: Mapping[str, float]
                   ) -> dict[str, np.ndarray]:
    """Per-sample held-out metrics: each reward's and evaluator's score, and the weighted
    training total (``reward``) when every training reward (weight > 0) was scored. NaN
    marks a sample a server could not score."""
    out = {name: np.asarray(s, dtype=np.float64) for name, s in per_reward.items()}
    training = [n for n, w in weights.items() if w > 0]
    if training and all(n in out for n in training):
        out[TOTAL] = sum((weights[n] * out[n] for n in training),
                         np.zeros(len(out[training[0]])))
    return out


def detail_means(details: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """Mean of each numeric detail (``intelligibility/wer``) over the items that have it."""
    values: dict[str, list[float]] = {}
    for name, items in details.items():
        for item in items:
            for key, v in item.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    values.setdefault(f"{name}/{key}", []).append(float(v))
    return {k: float(np.mean(v)) for k, v in values.items()}


def nan_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def eval_row(step: int, scores: Mapping[str, np.ndarray], details: Mapping[str, float],
             train_reward: float | None) -> Record:
    """One metrics.jsonl row of an evaluation: each metric's mean, its details, and the mean
    training reward over the steps since the previous evaluation (what the guard compares)."""
    row: Record = {"kind": EVAL_KIND, "step": step, "train_reward": train_reward}
    row.update({PREFIX + name: nan_mean(v) for name, v in sorted(scores.items())})
    row.update({PREFIX + name: v for name, v in sorted(details.items())})
    samples = max((len(v) for v in scores.values()), default=0)
    unscorable = np.isnan(scores[TOTAL]).mean() if TOTAL in scores and samples else 0.0
    row.update(eval_samples=samples, eval_unscorable=float(unscorable))
    return row


def metric(row: Record, name: str) -> float | None:
    value = row.get(PREFIX + name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def metric_names(row: Record) -> list[str]:
    """The held-out scores of a row (not their details)."""
    return [k[len(PREFIX):] for k in row if k.startswith(PREFIX) and "/" not in k[len(PREFIX):]]


# --------------------------------------------------------------------------- best so far


@dataclass
class Best:
    """Best value so far of each held-out metric, and the step best by ``metric``."""

    metric: str
    values: dict[str, float]
    step: int | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[Record], metric_name: str) -> Best:
        best = cls(metric_name, {})
        for row in rows:
            best.update(row)
        return best

    def update(self, row: Record) -> bool:
        """Take in an evaluation; True when it is the best so far by ``metric``."""
        improved = False
        for name in metric_names(row):
            value = metric(row, name)
            if value is None or value <= self.values.get(name, -math.inf):
                continue
            self.values[name] = value
            if name == self.metric:
                self.step, improved = int(row["step"]), True
        return improved


# --------------------------------------------------------------------------- the guard


@dataclass(frozen=True)
class Hacking:
    """One guard rule that fired: which metric, which rule, and the figures."""

    metric: str
    rule: str
    """``minimum`` or ``divergence``."""
    message: str


def check_guard(rows: Sequence[Record], guard: GuardSpec, base_train: float | None = None
                ) -> list[Hacking]:
    """The rules the latest evaluation (``rows[-1]``) breaks; ``rows`` are every evaluation
    so far, oldest first. ``base_train`` stands for the training reward of the base policy's
    evaluation (step 0, before any training step): the first step's reward, whose rollouts
    the base policy drew."""
    if not rows:
        return []
    last, found = rows[-1], []
    for name, floor in guard.minimum.items():
        value = metric(last, name)
        if value is not None and value < floor:
            found.append(Hacking(name, "minimum", f"held-out {name} {value:.3f} at step "
                                 f"{last['step']} is below its minimum {floor:.3f}"))
    for rule in guard.divergence:
        if len(rows) <= rule.evaluations:
            continue
        first = rows[-1 - rule.evaluations]
        before, after = metric(first, rule.metric), metric(last, rule.metric)
        start, end = first.get("train_reward"), last.get("train_reward")
        start = base_train if start is None and first["step"] == 0 else start
        if before is None or after is None or start is None or end is None:
            continue
        if end > start and before - after > rule.drop:
            found.append(Hacking(rule.metric, "divergence", (
                f"training reward rose {start:.3f} -> {end:.3f} while held-out "
                f"{rule.metric} fell {before:.3f} -> {after:.3f} (by {before - after:.3f}, "
                f"more than {rule.drop:g}) between steps {first['step']} and {last['step']} "
                f"({rule.evaluations} evaluations)")))
    return found


# --------------------------------------------------------------------------- paired statistics


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``after - before`` over paired samples with a Student-t confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    before: float
    after: float

    def describe(self, digits: int = 3) -> str:
        return (f"{self.before:.{digits}f} -> {self.after:.{digits}f} "
                f"({self.mean:+.{digits}f}, {CONFIDENCE:.0%} CI {self.low:+.{digits}f} to "
                f"{self.high:+.{digits}f}, n={self.n})")

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


def paired_difference(before: Sequence[float] | np.ndarray, after: Sequence[float] | np.ndarray,
                      confidence: float = CONFIDENCE) -> PairedDifference | None:
    """The paired change: pairs with a NaN on either side are left out; None under 2 pairs.

    Pairing (same prompts, same seeds) removes the prompt-to-prompt spread from the
    comparison, so the interval is that of the policy's change alone."""
    from scipy import stats

    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return None
    diff = b - a
    mean, sem = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff)))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(diff) - 1)) * sem
    return PairedDifference(mean, mean - half, mean + half, len(diff), float(a.mean()),
                            float(b.mean()))


# --------------------------------------------------------------------------- per-sample tables


def sample_rows(keys: Sequence[tuple[int, int]], texts: Sequence[str],
                scores: Mapping[str, np.ndarray], details: Mapping[str, Sequence[Mapping]]
                ) -> list[Record]:
    """One record per held-out sample: (prompt, sample) key, text, scores, server details."""
    rows = []
    for i, ((prompt, sample), text) in enumerate(zip(keys, texts, strict=True)):
        rows.append({"prompt": prompt, "sample": sample, "text": text,
                     "scores": {n: (None if math.isnan(float(v[i])) else float(v[i]))
                                for n, v in scores.items()},
                     "details": {n: dict(d[i]) for n, d in details.items()}})
    return rows


def paired_metrics(before: Sequence[Record], after: Sequence[Record]
                   ) -> dict[str, PairedDifference]:
    """Each metric's paired change between two evaluations' sample rows (matched by prompt and
    sample index)."""
    after_by_key = {(r["prompt"], r["sample"]): r for r in after}
    pairs = [(b, after_by_key[(b["prompt"], b["sample"])]) for b in before
             if (b["prompt"], b["sample"]) in after_by_key]
    names = sorted({n for b, a in pairs for n in b["scores"] if n in a["scores"]})
    out = {}
    for name in names:
        diff = paired_difference([_nan(b["scores"][name]) for b, _ in pairs],
                                 [_nan(a["scores"][name]) for _, a in pairs])
        if diff is not None:
            out[name] = diff
    return out


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
