"""Short-clip packing in the asr scorer (rewards/asr.py): real Whisper tiny.en on real
espeak-ng speech, packed against one-by-one transcription (each clip alone in its window)."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest

from benchmarks.asr_packing import SENTENCES as BENCHMARK_SENTENCES
from rlaif.cli import build_parser
from rlaif.modelref import resolve
from rlaif.rewards.asr import (
    CHUNK_SECONDS,
    PACK_GAP_SECONDS,
    PACK_MAX_SECONDS,
    AsrScorer,
    Segment,
    clip_text,
    plan_windows,
)
from rlaif.rewards.server import build_scorer, settings_from_args
from rlaif.rewards.text import normalize_text
from tests.integration.reward_support import speak

SENTENCES = BENCHMARK_SENTENCES[:16]
WER_TOLERANCE = 0.05  # corpus WER, packed vs one by one (measured: 0.123 vs 0.104)


@pytest.fixture(scope="module")
def scorer() -> AsrScorer:
    asr = AsrScorer(resolve("builtin:whisper-tiny.en"), "cpu", packing=True)
    asr.load()
    return asr


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, np.ndarray]]:
    return [(text, speak(text, rate=150 + 10 * (i % 4), pitch=35 + 10 * (i % 4)))
            for i, text in enumerate(SENTENCES)]


def one_by_one(scorer: AsrScorer, clips: list[np.ndarray]) -> list[str]:
    """The same loaded model with packing off: each clip alone in its window, greedy, as the
    server transcribed before packing (deterministic, unlike faster-whisper's transcribe,
    which falls back to sampling)."""
    scorer.packing = False
    try:
        return scorer.transcribe(clips)
    finally:
        scorer.packing = True


@pytest.mark.slow
def test_packed_transcripts_match_one_by_one_wer_with_fewer_encoder_windows(
        scorer, corpus, monkeypatch) -> None:
    windows: list[int] = []
    encode = scorer._encode

    def counting_encode(audio: list[np.ndarray]) -> object:
        """A spy on the real encoder: counts the 30-s windows it encodes."""
        windows.append(len(audio))
        return encode(audio)

    monkeypatch.setattr(scorer, "_encode", counting_encode)
    packed = scorer.transcribe([clip for _, clip in corpus])
    monkeypatch.undo()
    refs = [normalize_text(text) for text, _ in corpus]
    alone = [normalize_text(t) for t in one_by_one(scorer, [clip for _, clip in corpus])]
    packed_wer = jiwer.wer(refs, [normalize_text(t) for t in packed])
    alone_wer = jiwer.wer(refs, alone)
    assert abs(packed_wer - alone_wer) <= WER_TOLERANCE, (packed_wer, alone_wer, packed)
    assert alone_wer < 0.5  # the corpus is intelligible: the comparison means something
    # 16 clips of about 2.5 s share 2 windows; a few may be re-transcribed alone
    assert windows[0] <= 3 and sum(windows) <= 6, windows


@pytest.mark.slow
def test_long_clips_and_silence_fall_back_to_their_own_window(scorer, corpus) -> None:
    long = np.concatenate([clip for _, clip in corpus[:5]])  # over PACK_MAX_SECONDS
    silence = np.zeros(2 * 16000, dtype=np.float32)  # no text: its split is ambiguous
    clips = [corpus[0][1], long, silence, corpus[1][1], corpus[2][1]]
    assert len(long) / 16000 > PACK_MAX_SECONDS
    packed = scorer.transcribe(clips)
    # the long clip went alone and the silent one was transcribed again alone: same texts
    assert packed[1:3] == one_by_one(scorer, [long, silence])
    for i, text in ((0, SENTENCES[0]), (3, SENTENCES[1]), (4, SENTENCES[2])):
        assert jiwer.wer(normalize_text(text), normalize_text(packed[i])) < 0.5, packed


def test_plan_packs_short_clips_first_fit_decreasing_and_leaves_long_ones_alone() -> None:
    durations = [2.5] * 10 + [12.0, 31.0, 9.5]
    windows, alone = plan_windows(durations)
    assert alone == [10, 11]
    assert sorted(i for w in windows for i in w.clips) == [*range(10), 12]
    for w in windows:
        assert w.end <= CHUNK_SECONDS - PACK_GAP_SECONDS
        ends = [s + durations[i] for s, i in zip(w.starts, w.clips, strict=True)]
        assert all(b - a >= PACK_GAP_SECONDS for a, b in zip(ends, w.starts[1:], strict=False))
        assert all(round(s / 0.02, 6).is_integer() for s in w.starts)  # on the timestamp grid
    assert plan_windows([3.0]) == ([], [0])  # nothing to share a window with


@pytest.mark.parametrize(("segments", "complete", "expected"), [
    ([Segment(5.0, 7.4, " Hello there."), Segment(8.5, 9.9, " Next.")], True, "Hello there."),
    ([Segment(5.0, 6.0, " Hello"), Segment(6.3, 7.4, " there."), Segment(8.5, 9.0, " N")],
     True, "Hello there."),  # a pause inside the clip: both of its segments
    ([Segment(5.0, 7.5, " Hello there."), Segment(7.5, 9.9, " Next.")], True,
     "Hello there."),  # a coarse timestamp: the next clip's segment starts in the gap
    ([Segment(5.0, 7.4, " Hello there.")], True, "Hello there."),  # EOT: the last clip
    ([Segment(5.0, 7.4, " Hello there.")], False, None),  # cut off: more may have followed
    ([Segment(5.0, 9.9, " Hello there. Next.")], True, None),  # runs into the next clip
    ([Segment(2.0, 4.0, " Before.")], True, None),  # transcribed the previous clip
    ([Segment(8.5, 9.9, " Next.")], True, None),  # nothing inside the clip
    ([], True, None),
])
def test_clip_text_takes_its_own_segments_or_declares_the_split_ambiguous(
        segments, complete, expected) -> None:
    assert clip_text(segments, start=5.0, seconds=2.5, complete=complete) == expected


@pytest.mark.parametrize(("flag", "packing"), [([], False), (["--asr-packing"], True)])
def test_packing_is_off_by_default_and_can_be_switched_on(flag, packing) -> None:
    args = build_parser().parse_args(
        ["reward", "serve", "--kind", "asr", "--model", "builtin:whisper-tiny.en",
         "--device", "cpu", *flag])
    scorer = build_scorer(settings_from_args(args))
    assert isinstance(scorer, AsrScorer) and scorer.packing is packing
