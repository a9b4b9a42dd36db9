"""Short-clip packing in the asr reward server: the server's scorer (packing on, and off)
against the raw faster-whisper model transcribing the same clips one by one. Prints one table
per corpus.

    .venv/bin/python benchmarks/asr_packing.py [--clips 24] [--repeats 3] [--corpus all]

The clips are espeak-ng speech of 24 different short sentences (about 2-3 s each, the
trainer's per-sample case): the "moderate" corpus at 85-100 % of espeak-ng's rate, the
"varied" one at 85-125 % with low, medium and high pitch. The raw model runs
``WhisperModel.transcribe`` per clip with greedy decoding like the server (``beam_size=1``;
faster-whisper's default beam of 5 would be slower still). Its fallback to sampling at higher
temperatures is left on: without it tiny.en loops on some clips ("i will be fine" 28 times),
but with it a transcript can change between runs. Seconds (wall, and CPU over all threads)
are the best of ``--repeats`` runs after one warm-up; WER is over the whole corpus (total
errors / total reference words) after the server's normalisation, and "differ" counts clips
whose normalised transcript differs from the raw model's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jiwer
import numpy as np

from rlaif.rewards.asr import AsrScorer
from rlaif.rewards.scoring import ScoreInput, prepare
from rlaif.rewards.server import ServerSettings, build_scorer
from rlaif.rewards.text import normalize_text
from rlaif.trainer.audio import espeak_ssml

SENTENCES = [
    "The committee approved the new budget.",
    "Could you send me the report?",
    "Rain is expected across the hills tonight.",
    "She caught the early train.",
    "Please close the window before you leave.",
    "We will meet again tomorrow morning.",
    "The museum opens at nine on Sundays.",
    "He forgot his keys in the kitchen.",
    "Turn left at the second traffic light.",
    "The children played football in the park.",
    "Dinner is ready, come and sit down.",
    "My brother plays the guitar very well.",
    "The bridge was closed for repairs.",
    "Is this the right way to the station?",
    "They painted the fence bright green.",
    "A cold wind blew from the north.",
    "The doctor will see you shortly.",
    "Our flight was delayed by two hours.",
    "Water the plants every other day.",
    "The library has a large collection of maps.",
    "I would like a cup of tea, please.",
    "The river flooded the lower fields.",
    "Stop talking and listen carefully.",
    "The shop sells fresh bread every morning.",
]


CORPORA = {  # name: (rates in % of espeak-ng's 175 wpm, pitches), cycled over the sentences
    "moderate": ((85, 90, 95, 100), ("medium",)),
    "varied": ((85, 93, 101, 109, 117, 125), ("low", "medium", "high")),
}


def corpus(n: int, name: str) -> list[tuple[str, np.ndarray]]:
    """``n`` espeak-ng clips: the sentences cycled at the corpus's rates and pitches."""
    rates, pitches = CORPORA[name]
    out = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        ssml = (f'<speak><prosody rate="{rates[i % len(rates)]}%" '
                f'pitch="{pitches[i % len(pitches)]}">{text}</prosody></speak>')
        out.append((text, espeak_ssml(ssml)))
    return out


def best_of(repeats: int, run: Callable[[], list[str]]) -> tuple[float, float, list[str]]:
    """Least wall and CPU seconds (all threads) of ``repeats`` runs, and the last run's
    transcripts. CPU seconds tell more on a shared machine, where wall time waits for it."""
    walls, cpus, texts = [], [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        texts = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--corpus", choices=[*CORPORA, "all"], default="all")
    args = parser.parse_args()
    packed = build_scorer(ServerSettings(kind="asr", model="builtin:whisper-tiny.en",
                                         device="cpu", asr_packing=True))
    assert isinstance(packed, AsrScorer) and packed.packing
    prepare(packed)
    for name in CORPORA if args.corpus == "all" else [args.corpus]:
        compare(name, corpus(args.clips, name), packed, args.repeats)


def compare(name: str, data: list[tuple[str, np.ndarray]], asr: AsrScorer,
            repeats: int) -> None:
    """One table: the raw model one by one, the server's scorer without and with packing."""
    refs = [normalize_text(t) for t, _ in data]
    audio_s = sum(len(a) for _, a in data) / 16000
    print(f"\n{name} corpus: {len(data)} clips, {audio_s:.1f} s of audio, "
          f"mean {audio_s / len(data):.2f} s\n")

    def transcribe_raw() -> list[str]:
        return [" ".join(s.text.strip() for s in asr.model.transcribe(
            a, beam_size=1, language="en")[0]) for _, a in data]

    def scorer(packing: bool) -> Callable[[], list[str]]:
        items = [ScoreInput(str(i), a, t) for i, (t, a) in enumerate(data)]

        def run() -> list[str]:
            asr.packing = packing
            return [r.details["transcript"] for r in asr.score_batch(items)]
        return run

    runs = {"raw model, one by one": transcribe_raw,
            "server scorer, packing off": scorer(False),
            "server scorer, packing on": scorer(True)}
    for run in runs.values():
        run()  # warm-up
    results = {label: best_of(repeats, run) for label, run in runs.items()}
    base_wall, base_cpu, base_texts = results["raw model, one by one"]
    base_hyps = [normalize_text(t) for t in base_texts]
    print("| setup                      | wall s | speed-up | CPU s | speed-up | WER   | differ |")
    print("| -------------------------- | ------ | -------- | ----- | -------- | ----- | ------ |")
    for label, (wall, cpu, texts) in results.items():
        hyps = [normalize_text(t) for t in texts]
        differ = sum(h != b for h, b in zip(hyps, base_hyps, strict=True))
        print(f"| {label:<26} | {wall:6.2f} | {base_wall / wall:7.2f}x | {cpu:5.2f} | "
              f"{base_cpu / cpu:7.2f}x | {jiwer.wer(refs, hyps):5.3f} | {differ:6d} |")
    _, _, packed_texts = results["server scorer, packing on"]
    for ref, text, base in zip(refs, packed_texts, base_hyps, strict=True):
        if normalize_text(text) != base:
            print(f"  {ref!r}: raw {base!r}, packed {normalize_text(text)!r}")


if __name__ == "__main__":
    main()
