"""``builtin:wavegrad2-tiny``: a CPU-sized WaveGrad 2 pre-trained on espeak-ng speech.

Created once with a fixed seed under $RLAIF_CACHE (else ~/.cache/rlaif), atomically. The
model directory is also the LJSpeech-layout corpus it was trained on (metadata.csv +
wavs/), so ``spec.data.groundTruth: builtin:wavegrad2-tiny`` gives DLPO's diffusion loss
the same pairs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rlaif import modelref
from rlaif.config import TrainerConfig
from rlaif.files import build_once
from rlaif.trainer.wavegrad2 import config as presets
from rlaif.trainer.wavegrad2.corpus import METADATA, WAVS, write_espeak_corpus
from rlaif.trainer.wavegrad2.modeldir import WEIGHTS_FILE
from rlaif.trainer.wavegrad2.pretrain import pretrain

BUILTIN_NAME = "wavegrad2-tiny-v2"
"""v2: its corpus spoken by the deterministic front end (v1 renders depended on the order)."""
TEXTS = [
    "The cat sat on the mat.", "A quick brown fox jumps.", "She sells sea shells.",
    "Good morning to you all.", "We will meet again soon.", "The rain falls on the plain.",
    "Open the door, please.", "Numbers can be tricky.",
]
STEPS = 300


def make_tiny_model(out: Path, steps: int = STEPS, seed: int = 0) -> list[float]:
    """Write the espeak-ng corpus into ``out`` and pre-train the tiny model there; returns
    the pre-training losses."""
    corpus = write_espeak_corpus(TEXTS, out.with_name(f".{out.name}-corpus"),
                                 sample_rate=presets.tiny().sample_rate)
    losses = pretrain(corpus, out, presets.tiny(), steps, batch_size=4, seed=seed)[1]
    for name in (METADATA, WAVS):  # the model dir is also its corpus
        (corpus / name).rename(out / name)
    shutil.rmtree(corpus)
    return losses


def builtin_model_dir() -> Path:
    """Created on first use (about a minute on two cores), then reused."""
    return build_once(BUILTIN_NAME, WEIGHTS_FILE, make_tiny_model)


def ground_truth_dir(config: TrainerConfig, ref: str) -> Path:
    """spec.data.groundTruth: a folder (relative to the job) or a builtin: model's corpus."""
    return modelref.resolve(ref) if modelref.is_builtin(ref) else config.resolve_path(ref)
