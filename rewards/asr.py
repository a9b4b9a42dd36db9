"""Intelligibility: faster-whisper (CTranslate2) transcribes, jiwer scores against the text.

score = clip(1 - WER, 0, 1) after normalize_text (Whisper's English normaliser) on both
sides; details carry the raw reference and transcript, both normalised forms (what WER
compared), wer (unclipped: insertions can push it past 1) and cer.

Whisper pads every input to a 30-s window, so a 3-s clip costs a 30-s encoder pass. Short
clips (up to PACK_MAX_SECONDS) are therefore packed several to a window, PACK_GAP_SECONDS of
silence apart, and the window is encoded once. Each clip is then decoded on its own, from a
prompt that ends in the timestamp of its start (so no clip's text conditions another's), and
its text is the timestamped segments that lie mostly inside its span (widened by half a
gap). A clip whose split is ambiguous (no text, a segment reaching out of its span,
decoding cut off before the clip's end was seen) is transcribed again alone. Clips alone in
a window, longer clips up to 30 s and those re-transcriptions are decoded as one CTranslate2
batch of one clip per window (greedy, no timestamps). Longer clips go through the regular
transcribe().
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlaif.rewards.scoring import ScoreInput, ScoreResult, clip01
from rlaif.rewards.text import normalize_text

SAMPLE_RATE = 16000
CHUNK_SECONDS = 30
PACK_MAX_SECONDS = 10.0  # longer clips keep a window of their own
PACK_GAP_SECONDS = 1.0  # silence between packed clips: Whisper ends a segment at a pause
PACK_TOLERANCE_SECONDS = 0.2  # slack for timestamps past a clip's span (half a gap either side)
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
PACK_TOKENS_PER_SECOND = 12  # decoding budget per second of clip (fast speech: about 9)


@dataclass
class Window:
    """Clips (indices) sharing one 30-s window and where each starts, in seconds."""

    clips: list[int] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    end: float = 0.0  # end of the last clip

    def fits(self, seconds: float, capacity: float) -> bool:
        gap = PACK_GAP_SECONDS + TIME_PRECISION if self.clips else 0.0
        return self.end + gap + seconds <= capacity

    def add(self, clip: int, seconds: float) -> None:
        # on the timestamp grid: the clip's decoding prompt ends in this exact timestamp
        start = math.ceil(round((self.end + PACK_GAP_SECONDS) / TIME_PRECISION, 6)
                          ) * TIME_PRECISION if self.clips else 0.0
        self.clips.append(clip)
        self.starts.append(start)
        self.end = start + seconds


def plan_windows(durations: list[float]) -> tuple[list[Window], list[int]]:
    """First-fit decreasing packing of the clips up to PACK_MAX_SECONDS into windows that
    keep a trailing gap free (so the last segment can close with a timestamp); returns the
    windows of two or more clips and the clips that go alone (long ones, lone leftovers)."""
    capacity = CHUNK_SECONDS - PACK_GAP_SECONDS
    windows: list[Window] = []
    alone = [i for i, d in enumerate(durations) if d > PACK_MAX_SECONDS]
    for i in sorted(set(range(len(durations))) - set(alone), key=lambda i: -durations[i]):
        window = next((w for w in windows if w.fits(durations[i], capacity)), None)
        if window is None:
            window = Window()
            windows.append(window)
        window.add(i, durations[i])
    alone += [w.clips[0] for w in windows if len(w.clips) == 1]
    return [w for w in windows if len(w.clips) > 1], sorted(alone)


@dataclass
class Segment:
    start: float
    end: float
    text: str


def clip_text(segments: list[Segment], start: float, seconds: float, complete: bool
              ) -> str | None:
    """The text of a clip decoded from its start in a packed window: the segments whose
    middle lies before the end of its span, widened by half a gap (Whisper's timestamps are
    coarse: a segment often starts a little before its speech). None when the split is
    ambiguous: no text, one of those segments reaching out of the span by more than
    PACK_TOLERANCE_SECONDS, or decoding that ended (``complete`` False: cut off at the token
    limit) before a segment past the span showed the clip was over."""
    begin, end = start - PACK_GAP_SECONDS / 2, start + seconds + PACK_GAP_SECONDS / 2
    inside = [seg for seg in segments if (seg.start + seg.end) / 2 < end]
    if not inside or (not complete and len(inside) == len(segments)):
        return None
    if (inside[0].start < begin - PACK_TOLERANCE_SECONDS
            or inside[-1].end > end + PACK_TOLERANCE_SECONDS):
        return None
    return " ".join(seg.text.strip() for seg in inside).strip() or None


class AsrScorer:
    def __init__(self, model_dir: Path, device: str, language: str = "en",
                 packing: bool = False):
        self.model_dir = model_dir
        self.device = device
        self.language = language
        self.packing = packing

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
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        self.transcribe([tone, tone] if self.packing else [tone])

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
        """Text per clip: short clips packed several to a window, the rest one per window."""
        durations = [len(c) / SAMPLE_RATE for c in clips]
        texts = [""] * len(clips)
        windows, alone = plan_windows(durations) if self.packing else ([], list(range(len(clips))))
        if windows:
            order = [i for w in windows for i in w.clips]
            packed = self._transcribe_packed([[clips[i] for i in w.clips] for w in windows],
                                             windows)
            for i, text in zip(order, packed, strict=True):
                texts[i] = text or ""
            alone = sorted(alone + [i for i, text in zip(order, packed, strict=True)
                                    if text is None])
        short = [i for i in alone if durations[i] <= CHUNK_SECONDS]
        if short:
            for i, text in zip(short, self._transcribe_short([clips[i] for i in short]),
                               strict=True):
                texts[i] = text
        for i in sorted(set(alone) - set(short)):
            segments, _ = self.model.transcribe(clips[i], beam_size=1, language=self.language,
                                                without_timestamps=True)
            texts[i] = " ".join(s.text.strip() for s in segments)
        return texts

    def _transcribe_short(self, clips: list[np.ndarray]) -> list[str]:
        """One clip per window, decoded as one batch (greedy, no timestamps)."""
        results = self._generate(self._encode(clips), [self.prompt] * len(clips),
                                 self.model.max_length)
        return [self.tokenizer.decode(r.sequences_ids[0]) for r in results]

    def _transcribe_packed(self, packs: list[list[np.ndarray]], windows: list[Window]
                           ) -> list[str | None]:
        """Text per packed clip, in window order; None where the split was ambiguous.

        Each window is encoded once; its encoding is repeated for each of its clips, which
        are decoded as one batch, each from its own start timestamp."""
        import ctranslate2

        encoded = self._encode([self._pack(clips, w.starts)
                                for clips, w in zip(packs, windows, strict=True)])
        device = ctranslate2.Device.cuda if self.device == "cuda" else ctranslate2.Device.cpu
        rows = [k for k, w in enumerate(windows) for _ in w.clips]
        per_clip = np.asarray(encoded.to_device(ctranslate2.Device.cpu))[rows]
        starts = [start for w in windows for start in w.starts]
        seconds = [len(c) / SAMPLE_RATE for clips in packs for c in clips]
        new_tokens = int(max(seconds) * PACK_TOKENS_PER_SECOND) + 4
        prompt = list(self.tokenizer.sot_sequence)
        # CTranslate2 4.x stops Whisper at max_length // 2 new tokens here; twice the budget
        # makes a cut-off decode return at least new_tokens tokens under either reading.
        results = self._generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(per_clip)).to_device(device),
            [[*prompt, self._timestamp(start)] for start in starts], 2 * new_tokens)
        texts = []
        for result, start, length in zip(results, starts, seconds, strict=True):
            tokens = result.sequences_ids[0]
            texts.append(clip_text(self._segments(tokens, start), start, length,
                                   complete=len(tokens) < new_tokens))
        return texts

    @staticmethod
    def _pack(clips: list[np.ndarray], starts: list[float]) -> np.ndarray:
        """The clips at their start times in one waveform, silence (zeros) between them."""
        end = round(starts[-1] * SAMPLE_RATE) + len(clips[-1])
        audio = np.zeros(end, dtype=np.float32)
        for clip, start in zip(clips, starts, strict=True):
            at = round(start * SAMPLE_RATE)
            audio[at:at + len(clip)] = clip
        return audio

    def _timestamp(self, seconds: float) -> int:
        return self.tokenizer.timestamp_begin + round(seconds / TIME_PRECISION)

    def _segments(self, tokens: list[int], start: float) -> list[Segment]:
        """Text between timestamp tokens, the first segment starting at ``start`` (the
        prompt's timestamp); a last segment left open ends at the window's end."""
        begin = self.tokenizer.timestamp_begin
        segments: list[Segment] = []
        text: list[int] = []
        for token in tokens:
            if token < self.tokenizer.eot:
                text.append(token)
            if token < begin:
                continue
            at = (token - begin) * TIME_PRECISION
            if text:
                segments.append(Segment(start, at, self.tokenizer.decode(text)))
                text = []
            start = at
        if text:
            segments.append(Segment(start, float(CHUNK_SECONDS), self.tokenizer.decode(text)))
        return segments

    def _encode(self, audio: list[np.ndarray]) -> Any:
        """Encoder output (a CTranslate2 StorageView) of each waveform padded to 30 s."""
        from faster_whisper.audio import pad_or_trim

        fe = self.model.feature_extractor
        return self.model.encode(np.stack([pad_or_trim(fe(a)) for a in audio])
                                 .astype(np.float32))

    def _generate(self, encoded: Any, prompts: list[list[int]], max_length: int) -> list[Any]:
        return self.model.model.generate(
            encoded, [list(p) for p in prompts], beam_size=1, max_length=max_length,
            suppress_blank=True, suppress_tokens=self.suppress)
