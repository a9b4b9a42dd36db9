"""LJSpeech-layout folders (``metadata.csv`` + ``wavs/ID.wav``) as WaveGrad 2 training pairs.

Durations without an aligner: espeak-ng speaks the text and reports where each phoneme
starts; those boundaries, scaled linearly to the length of the recording, give each
phoneme's frame count. On espeak-ng's own speech this is exact; on human speech it is a
rough alignment (uniform speaking-rate assumption) that the duration predictor and the
Gaussian upsampling smooth over.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from rlaif.audio import resample
from rlaif.trainer.wavegrad2.config import SPECIAL_SYMBOLS, UNKNOWN, WaveGrad2Config
from rlaif.trainer.wavegrad2.frontend import speak

METADATA = "metadata.csv"
WAVS = "wavs"


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    wav: Path


@dataclass
class Example:
    """One training pair: phoneme ids, frames per phoneme, waveform (frames * hop samples)."""

    ids: torch.Tensor
    durations: torch.Tensor
    audio: torch.Tensor


class CorpusError(ValueError):
    """A malformed corpus folder; the message names the file and line."""


def read_metadata(folder: Path) -> list[Utterance]:
    """``ID|text[|normalised text]`` lines; the normalised text wins when present."""
    folder = Path(folder)
    path = folder / METADATA
    if not path.is_file():
        raise CorpusError(f"{path}: missing (expected an LJSpeech-layout folder: "
                          f"{METADATA} + {WAVS}/)")
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), 1):
            if not row or not row[0].strip():
                continue
            text = (row[2] if len(row) > 2 and row[2].strip() else row[1] if len(row) > 1
                    else "").strip()
            if not text:
                raise CorpusError(f"{path}:{number}: expected ID|text, got {'|'.join(row)!r}")
            wav = folder / WAVS / f"{row[0].strip()}.wav"
            if not wav.is_file():
                raise CorpusError(f"{path}:{number}: {wav} does not exist")
            out.append(Utterance(row[0].strip(), text, wav))
    if not out:
        raise CorpusError(f"{path}: no utterances")
    return out


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate``."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise CorpusError(f"{path}: cannot read audio ({exc})") from None
    return resample(audio.mean(axis=1), rate, sample_rate)


def durations(starts: list[int], spoken_length: int, frames: int) -> np.ndarray:
    """Frames per phoneme from espeak-ng's start samples, scaled to ``frames`` in total."""
    bounds = np.asarray([*starts, spoken_length], dtype=np.float64)
    scaled = np.round(np.clip(bounds / max(spoken_length, 1), 0, 1) * frames)
    return np.diff(scaled).clip(min=0)


def symbol_ids(config: WaveGrad2Config, phonemes: Iterable[str]) -> torch.Tensor:
    index = {s: i for i, s in enumerate(config.symbols)}
    unknown = index[UNKNOWN]
    return torch.tensor([index.get(p, unknown) for p in phonemes], dtype=torch.long)


def vocabulary(phoneme_lists: Iterable[list[str]]) -> list[str]:
    """The special symbols, then every phoneme seen in the corpus (sorted: reproducible)."""
    seen = {p for phonemes in phoneme_lists for p in phonemes} - set(SPECIAL_SYMBOLS)
    return [*SPECIAL_SYMBOLS, *sorted(seen)]


def phonemes_and_durations(text: str, audio_length: int, hop: int
                           ) -> tuple[list[str], np.ndarray]:
    speech = speak(text)
    frames = audio_length // hop
    return speech.phonemes, durations(speech.starts, len(speech.audio), frames)


def read_examples(folder: Path, config: WaveGrad2Config) -> list[Example]:
    """Every pair of ``folder`` at the model's sample rate, trimmed to whole frames."""
    hop, examples = config.hop_length, []
    for utt in read_metadata(folder):
        audio = load_audio(utt.wav, config.sample_rate)
        if len(audio) < hop:
            raise CorpusError(f"{utt.wav}: shorter than one frame ({hop} samples)")
        phonemes, frames = phonemes_and_durations(utt.text, len(audio), hop)
        examples.append(Example(symbol_ids(config, phonemes), torch.from_numpy(frames).float(),
                                torch.from_numpy(audio[: int(frames.sum()) * hop].copy())))
    return examples


def corpus_phonemes(folder: Path) -> list[list[str]]:
    """Phonemes of every text in ``folder`` (to build a vocabulary before the model)."""
    return [speak(utt.text).phonemes for utt in read_metadata(folder)]


def write_espeak_corpus(texts: list[str], out: Path, sample_rate: int = 16000) -> Path:
    """An LJSpeech-layout folder of espeak-ng speech: a base corpus needing no download."""
    out = Path(out)
    (out / WAVS).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(texts):
        speech = speak(text)
        audio = resample(speech.audio, speech.sample_rate, sample_rate)
        uid = f"ES-{i:04d}"
        sf.write(str(out / WAVS / f"{uid}.wav"), audio, sample_rate, subtype="PCM_16")
        lines.append(f"{uid}|{text}|{text}\n")
    tmp = out / f".{METADATA}.tmp"
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(out / METADATA)
    return out
