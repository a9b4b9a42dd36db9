"""The prompts file: one JSON object a line, ``{"text": ..., "labels": {...}}``.

A line may carry a voice prompt, ``"reference": {"audio": "ref/0001.wav", "text": "..."}``:
reference audio (a path, relative ones against the prompts file's folder) and its
transcript. Speech LMs that clone voices prefix it; speaker-similarity rewards compare
each sample with it.

The labeller writes it, ``rlaif validate``-style checks and the trainer read it. A line
the labeller could not label is kept as ``{"text": ..., "labels": null, "error": why}``
so reruns skip it knowingly; the trainer leaves such lines out.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlaif.api.labels import DIMENSIONS, LabelSchema

log = logging.getLogger(__name__)

MAX_REFERENCE_SECONDS = 60.0
"""A voice prompt is a few seconds of speech; longer files would only cost memory."""


@dataclass(frozen=True)
class VoiceReference:
    """A voice prompt: a recording of the target speaker and what it says."""

    audio: Path
    text: str = ""

    def waveform(self) -> np.ndarray:
        """The recording as 16 kHz mono float32 (read once per process)."""
        return _read_reference(self.audio)


@functools.lru_cache(maxsize=256)
def _read_reference(path: Path) -> np.ndarray:
    import soundfile as sf

    from rlaif.audio import resample

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), rate)


@dataclass(frozen=True)
class Prompt:
    text: str
    labels: dict[str, str] = field(default_factory=dict)
    reference: VoiceReference | None = None


class PromptFileError(ValueError):
    """A malformed prompts file; the message names file and line."""


def parse_reference(obj: object, base: Path) -> VoiceReference:
    """``{"audio": PATH, "text": ...}`` -> VoiceReference; the audio file must exist."""
    if not isinstance(obj, dict) or not isinstance(obj.get("audio"), str) or not obj["audio"]:
        raise ValueError('reference: expected an object with an "audio" path')
    text = obj.get("text", "")
    if not isinstance(text, str):
        raise ValueError("reference.text: must be a string")
    audio = base / obj["audio"]
    if not audio.is_file():
        raise ValueError(f"reference.audio: {audio} is not a file")
    import soundfile as sf

    try:  # the header only: a bad file fails here, not in the middle of a run
        seconds = sf.info(str(audio)).duration
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ValueError(f"reference.audio: {audio} is not readable audio ({exc})") from None
    if not 0 < seconds <= MAX_REFERENCE_SECONDS:
        raise ValueError(f"reference.audio: {audio} lasts {seconds:.1f} s; a voice prompt "
                         f"must be longer than 0 and at most {MAX_REFERENCE_SECONDS} s")
    return VoiceReference(audio, text.strip())


def parse_prompt_line(line: str, schema: LabelSchema, base: Path = Path(".")) -> Prompt | None:
    """One line -> Prompt (labels in the schema's spelling), None for an unlabelled record.

    ``base`` is the folder relative reference audio paths resolve against."""
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
    canonical: dict[str, str] = {d: schema.canonical(d, labels[d]) or "" for d in DIMENSIONS}
    reference = parse_reference(obj["reference"], base) if obj.get("reference") else None
    return Prompt(obj["text"].strip(), canonical, reference)


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
            prompt = parse_prompt_line(line, schema, path.parent)
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
