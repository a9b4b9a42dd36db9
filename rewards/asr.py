"""Intelligibility: faster-whisper (CTranslate2) transcribes, jiwer scores against the text.

score = clip(1 - WER, 0, 1) after normalize_text (Whisper's English normaliser) on both
sides; details carry the raw reference and transcript, both normalised forms (what WER
compared), wer (unclipped: insertions can push it past 1) and cer. faster-whisper's own
batched pipeline batches the 30-s chunks of one file; a reward server needs batches of
separate clips, so clips up to 30 s are encoded and decoded as one CTranslate2 batch
(greedy decoding, no timestamps). Longer clips go through the regular transcribe().
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlaif.rewards.scoring import ScoreInput, ScoreResult, clip01
from rlaif.rewards.text import normalize_text

CHUNK_SECONDS = 30


class AsrScorer:
    def __init__(self, model_dir: Path, device: str, language: str = "en"):
        self.model_dir = model_dir
        self.device = device
        self.language = language

    def load(self) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        compute_type = "float16" if self.device == "cuda" else "int8"
        self.model = WhisperModel(str(self.model_dir), device=self.device,
                                  compute_type=compute_type)
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                   language=self.language if multilingual else None)
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self.suppress = get_suppressed_tokens(self.tokenizer, [-1])

    def warm_up(self) -> None:
        t = np.arange(16000) / 16000
        self.transcribe([(0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)])

    def check(self, item: ScoreInput) -> str | None:
        if not normalize_text(item.text):
            return "text: required for asr (the words the audio should say)"
        return None

    def score_batch(self, items: list[ScoreInput]) -> list[ScoreResult]:
        import jiwer

        results = []
        for item, transcript in zip(items, self.transcribe([i.audio for i in items]),
                                    strict=True):
            ref, hyp = normalize_text(item.text), normalize_text(transcript)
            wer = float(jiwer.wer(ref, hyp))
            cer = float(jiwer.cer(ref, hyp))
            results.append(ScoreResult(score=clip01(1.0 - wer), details={
                "reference": item.text, "transcript": transcript.strip(),
                "normalizedReference": ref, "normalizedTranscript": hyp, "wer": wer,
                "cer": cer}))
        return results

    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        """Text per clip; short clips decoded as one batch."""
        texts = [""] * len(clips)
        short = [i for i, c in enumerate(clips) if len(c) <= CHUNK_SECONDS * 16000]
        if short:
            for i, text in zip(short, self._transcribe_short([clips[i] for i in short]),
                               strict=True):
                texts[i] = text
        for i in sorted(set(range(len(clips))) - set(short)):
            segments, _ = self.model.transcribe(clips[i], beam_size=1, language=self.language,
                                                without_timestamps=True)
            texts[i] = " ".join(s.text.strip() for s in segments)
        return texts

    def _transcribe_short(self, clips: list[np.ndarray]) -> list[str]:
        from faster_whisper.audio import pad_or_trim

        fe = self.model.feature_extractor
        features = np.stack([pad_or_trim(fe(c)) for c in clips]).astype(np.float32)
        results = self.model.model.generate(
            self.model.encode(features), [list(self.prompt) for _ in clips], beam_size=1,
            max_length=self.model.max_length, suppress_blank=True,
            suppress_tokens=self.suppress)
        eot = self.tokenizer.eot
        return [self.tokenizer.decode([t for t in r.sequences_ids[0] if t < eot])
                for r in results]
