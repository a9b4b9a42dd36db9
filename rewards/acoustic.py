"""The acoustic judge (``--kind judge --model builtin:acoustic``): label alignment with no LLM.

It measures the signal and scores agreement with three of the four prosody labels. The
mapping (documented in docs/rewards.md):

- ``speechRate``: syllables per second over the speech (leading and trailing silence
  trimmed); syllables are counted from the item's text (vowel groups per word), or
  estimated from onsets when there is no text. The schema's classes, slowest first, sit
  at log-spaced centres from RATE_SLOWEST to RATE_FASTEST syllables/s; a rate within half
  a class of the target scores 1, falling linearly to 0 two classes further away.
- ``intonation``: the pitch slope (semitones/s) over the last FINAL_WINDOW_S of voiced
  speech (librosa pyin). Question-like values (Interrogative, Rhetorical Question, any
  value containing "question") expect a rise, all others a fall;
  score = sigmoid(±slope / SLOPE_SCALE).
- ``emotion``: arousal measured from the pitch range (10th-90th percentile, semitones)
  and loudness dynamics, against each emotion's arousal in AROUSAL;
  score = 1 - |measured - target|. Emotions not in the table are not scored.
- ``structure`` has no reliable acoustic correlate and is not scored.

The item's score is the mean over the scored dimensions (those of the three the item has
labels for, among ``judge.dimensions``).
"""

from __future__ import annotations

import math
import re

import numpy as np

from rlaif.api.labels import DIMENSIONS, LabelSchema
from rlaif.constants import SAMPLE_RATE
from rlaif.rewards.scoring import ScoreInput, ScoreResult, clip01

RATE_SLOWEST = 2.8  # syllables/s at the centre of the slowest class (espeak-ng -s 80: 2.7)
RATE_FASTEST = 6.5  # ... of the fastest class (espeak-ng -s 200: 6.3)
FINAL_WINDOW_S = 0.4
SLOPE_SCALE = 4.0  # semitones/s
TRIM_DB = 35.0
HOP = 256
FMIN, FMAX = 60.0, 500.0
MIN_VOICED_FRAMES = 5

AROUSAL = {
    "excited": 0.9, "angry": 0.9, "desperate": 0.8, "optimistic": 0.6, "positive": 0.6,
    "expectant": 0.5, "confused": 0.4, "worried": 0.4, "negative": 0.3, "neutral": 0.2,
}  # fmt: skip
RISING_INTONATIONS = {"interrogative", "rhetorical question"}
SCORED = ("speechRate", "intonation", "emotion")


class AcousticJudge:
    """Signal-processing prosody judge; the CPU default and a sanity check for the LLM judge."""

    def __init__(self, schema: LabelSchema, dimensions: tuple[str, ...] = DIMENSIONS):
        self.schema = schema
        self.scored = tuple(dim for dim in SCORED if dim in dimensions)
        if not self.scored:
            raise ValueError(f"judge.dimensions: the acoustic judge scores only "
                             f"{', '.join(SCORED)}; keep at least one of them")

    def load(self) -> None:
        import librosa  # noqa: F401  (imported once here rather than on the first request)

    def warm_up(self) -> None:
        """Both paths of ``measure`` (syllables from text, from onsets), so every librosa
        kernel a request can reach is compiled now, under the server's cache lock."""
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
        labels = {"intonation": "Declarative"}
        self.score_batch([ScoreInput("warm-up", tone, "warm up", labels),
                          ScoreInput("warm-up-no-text", tone, "", labels)])

    def check(self, item: ScoreInput) -> str | None:
        if not any(_scorable(dim, item.labels.get(dim)) for dim in self.scored):
            return (f"labels: the acoustic judge needs at least one of {', '.join(self.scored)} "
                    f"(emotion: one of {sorted(AROUSAL)})")
        return None

    def score_batch(self, items: list[ScoreInput]) -> list[ScoreResult]:
        return [self.score_one(item) for item in items]

    def score_one(self, item: ScoreInput) -> ScoreResult:
        feats = measure(item.audio, item.text)
        details: dict[str, float | None] = dict(feats)
        scores = []
        for dim in self.scored:
            value = item.labels.get(dim)
            if not _scorable(dim, value):
                continue
            assert value is not None
            s = self._dimension_score(dim, value, feats)
            details[dim] = s
            scores.append(s)
        return ScoreResult(score=float(np.mean(scores)), details=details)

    def _dimension_score(self, dim: str, value: str, feats: dict[str, float | None]) -> float:
        if dim == "speechRate":
            rate = feats["syllablesPerSecond"]
            if rate is None:
                return 0.0
            return rate_score(rate, self.schema.speech_rate.index(value),
                              len(self.schema.speech_rate))
        if dim == "intonation":
            slope = feats["finalSlope"]
            if slope is None:
                return 0.0
            sign = 1.0 if is_rising(value) else -1.0
            return 1.0 / (1.0 + math.exp(-sign * slope / SLOPE_SCALE))
        arousal = feats["arousal"]
        return 0.0 if arousal is None else clip01(1.0 - abs(arousal - AROUSAL[value.lower()]))


def _scorable(dim: str, value: str | None) -> bool:
    if not value:
        return False
    return dim != "emotion" or value.lower() in AROUSAL


def is_rising(intonation: str) -> bool:
    key = intonation.lower()
    return key in RISING_INTONATIONS or "question" in key


def rate_score(rate: float, target: int, classes: int) -> float:
    """1 within half a class of the target class's centre, 0 two classes beyond that."""
    position = (classes - 1) * math.log(max(rate, 1e-3) / RATE_SLOWEST) / math.log(
        RATE_FASTEST / RATE_SLOWEST)
    return clip01(1.0 - max(0.0, abs(position - target) - 0.5) / 2.0)


def count_syllables(text: str) -> int:
    """Vowel groups per word (a silent final 'e' or 'ed' dropped), at least one per word;
    digits count about 1.5 syllables each."""
    total = 0.0
    for word in re.findall(r"[a-zA-Z']+|\d+", text.lower()):
        if word.isdigit():
            total += 1.5 * len(word)
            continue
        groups = len(re.findall(r"[aeiouy]+", word))
        silent_e = word.endswith("e") and not word.endswith(("le", "ee"))
        silent_ed = word.endswith("ed") and not word.endswith(("ted", "ded"))
        if (silent_e or silent_ed) and groups > 1:
            groups -= 1
        total += max(1, groups)
    return round(total)


def measure(audio: np.ndarray, text: str) -> dict[str, float | None]:
    """Speaking rate, pitch level/range, final pitch slope, loudness dynamics, arousal.
    None marks what could not be measured (no speech, no voiced frames)."""
    import librosa

    # One dtype, so no request compiles a kernel signature that warm-up did not.
    speech, _ = librosa.effects.trim(np.asarray(audio, dtype=np.float32), top_db=TRIM_DB)
    seconds = len(speech) / SAMPLE_RATE
    out: dict[str, float | None] = {"speechSeconds": seconds, "syllablesPerSecond": None,
                                    "pitchMedian": None, "pitchRange": None,
                                    "finalSlope": None, "loudnessStd": None, "arousal": None}
    if seconds < 0.1:
        return out
    syllables = count_syllables(text) if text.strip() else len(
        librosa.onset.onset_detect(y=speech, sr=SAMPLE_RATE, hop_length=HOP))
    out["syllablesPerSecond"] = syllables / seconds
    rms = librosa.feature.rms(y=speech, hop_length=HOP)[0]
    loud = 20 * np.log10(rms[rms > 1e-4]) if (rms > 1e-4).any() else np.zeros(1)
    loudness_std = out["loudnessStd"] = float(np.std(loud))
    f0, voiced, _ = librosa.pyin(speech, fmin=FMIN, fmax=FMAX, sr=SAMPLE_RATE,
                                 frame_length=1024, hop_length=HOP)
    voiced &= np.isfinite(f0)
    if voiced.sum() < MIN_VOICED_FRAMES:
        return out
    semitones = 12 * np.log2(f0[voiced] / 100.0)
    times = np.flatnonzero(voiced) * HOP / SAMPLE_RATE
    pitch_range = float(np.percentile(semitones, 90) - np.percentile(semitones, 10))
    final = times >= times[-1] - FINAL_WINDOW_S
    slope = float(np.polyfit(times[final], semitones[final], 1)[0]) if final.sum() >= 3 else 0.0
    out.update(pitchMedian=float(100 * 2 ** (np.median(semitones) / 12)), pitchRange=pitch_range,
               finalSlope=slope,
               arousal=clip01(0.75 * (pitch_range - 1) / 8 + 0.25 * (loudness_std - 6) / 12))
    return out
