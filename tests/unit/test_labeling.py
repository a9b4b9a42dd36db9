"""The labeller's pure parts: input reading and splitting, backoff, the prompts file, summary."""

from __future__ import annotations

import argparse
import email.utils
import json
from pathlib import Path

import pytest

from rlaif.api.labels import LabelSchema
from rlaif.cli import build_parser
from rlaif.data import PromptFileError
from rlaif.labeling.command import usage_errors
from rlaif.labeling.llm import MAX_RETRY_AFTER_S, RetryPolicy, retry_after_seconds
from rlaif.labeling.output import (
    PromptsWriter,
    labelled_record,
    read_records,
    repair_torn_tail,
    unlabelled_record,
)
from rlaif.labeling.sentences import InputFileError, read_sentences, split_sentences
from rlaif.labeling.summary import format_summary, summarize

SCHEMA = LabelSchema()
LABELS = {"structure": "Statement", "emotion": "Neutral", "speechRate": "Slow",
          "intonation": "Declarative"}


# --------------------------------------------------------------------------- sentences


@pytest.mark.parametrize(("text", "expected"), [
    ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("J. K. Rowling wrote it. e.g. this stays.", ["J. K. Rowling wrote it. e.g. this stays."]),
    ('He said "Stop!" Then he left... Why?', ['He said "Stop!"', "Then he left...", "Why?"]),
    ("It costs 3.5 dollars. 42 people came.", ["It costs 3.5 dollars.", "42 people came."]),
    ("  spaced \t out   text  ", ["spaced out text"]),
])
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_txt_keeps_lines_apart_but_joins_hard_wrapped_prose(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("HE HOPED THERE WOULD BE STEW\nSHE SAID NOTHING\n\n"
                    "This sentence is wrapped\nacross two lines. Short one.\nShort one.\n")
    assert read_sentences(path) == ["HE HOPED THERE WOULD BE STEW", "SHE SAID NOTHING",
                                    "This sentence is wrapped across two lines.", "Short one."]


def test_jsonl_and_csv_inputs(tmp_path: Path) -> None:
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"text": "A one. A two.", "labels": None}) + "\n\n")
    assert read_sentences(jsonl) == ["A one.", "A two."]
    csv_file = tmp_path / "t.csv"
    csv_file.write_text('id,Text\n1,"Hello, world."\n2,"Line one.\nLine two."\n')
    assert read_sentences(csv_file) == ["Hello, world.", "Line one.", "Line two."]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("t.jsonl", '{"text": "ok"}\n{"txt": 1}\n', r't\.jsonl:2: expected an object with a string'),
    ("t.jsonl", "{oops\n", r"t\.jsonl:1: invalid JSON"),
    ("t.csv", "id,sentence\n1,hi\n", r't\.csv:1: the header has no "text" column'),
    ("t.md", "# hi", r"unsupported input type '\.md'"),
    ("t.txt", "\n  \n", "no text to label"),
])
def test_bad_input_names_the_file_and_line(tmp_path: Path, name: str, content: str,
                                           message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputFileError, match=message):
        read_sentences(path)


# --------------------------------------------------------------------------- backoff


def test_retry_after_header_forms() -> None:
    now = 1_000_000.0
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_backoff_grows_with_jitter_and_retry_after_wins() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=5.0)
    assert all(0 <= policy.delay(0) <= 1.0 for _ in range(50))
    assert all(0 <= policy.delay(10) <= 5.0 for _ in range(50))
    assert max(policy.delay(2) for _ in range(200)) > 1.0  # grows beyond the first step
    assert policy.delay(0, retry_after=12.0) == 12.0
    assert policy.delay(0, retry_after=1e9) == MAX_RETRY_AFTER_S


# --------------------------------------------------------------------------- prompts file


def test_writer_appends_and_a_reopen_knows_what_is_done(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "p.jsonl"
    with PromptsWriter(out, SCHEMA) as writer:
        writer.append(labelled_record("First  one.", LABELS))
        writer.append(unlabelled_record("Second.", "invalid answer"))
    with PromptsWriter(out, SCHEMA) as writer:
        assert writer.done == {"First one.", "Second."}  # keyed like split sentences
    assert read_records(out, SCHEMA) == [
        {"text": "First  one.", "labels": LABELS},
        {"text": "Second.", "labels": None, "error": "invalid answer"}]


def test_repair_torn_tail_cuts_only_an_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    whole = json.dumps(labelled_record("A.", LABELS)) + "\n"
    path.write_text(whole)
    assert not repair_torn_tail(path) and path.read_text() == whole
    path.write_text(whole + '{"text": "B.", "lab')
    assert repair_torn_tail(path) and path.read_text() == whole
    path.write_text('{"text": "only a torn line')
    assert repair_torn_tail(path) and path.read_text() == ""


def test_read_records_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(labelled_record("A.", LABELS)) + "\n"
                    + json.dumps({"text": "B.", "labels": {**LABELS, "speechRate": "Slowish"}}))
    with pytest.raises(PromptFileError, match=r"p\.jsonl:2: labels\.speechRate: 'Slowish'"):
        read_records(path, SCHEMA)


# --------------------------------------------------------------------------- summary


def test_summary_shows_every_value_and_the_unlabelled_reasons() -> None:
    records = [labelled_record(f"S{i}.", LABELS) for i in range(3)]
    records.append(labelled_record("Q?", {**LABELS, "intonation": "Interrogative"}))
    records += [unlabelled_record("X.", "no JSON object")] * 2
    summary = summarize(records)
    assert (summary.labelled, summary.unlabelled) == (4, 2)
    rows = {tuple(line.split()[:-2]): line.split()[-2:] for line in
            format_summary(summary, SCHEMA).splitlines()[1:] if line.endswith("%")}
    assert rows[("Declarative",)] == ["3", "75.0%"]
    assert rows[("Interrogative",)] == ["1", "25.0%"]
    assert rows[("Extremely", "Slow")] == ["0", "0.0%"]  # rare values stay visible
    assert len(rows) == sum(len(SCHEMA.values(d)) for d in
                            ("structure", "emotion", "speechRate", "intonation"))
    assert "     2  no JSON object" in format_summary(summary, SCHEMA)


# --------------------------------------------------------------------------- flags


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["label", "--in", "t.txt", "--out", "p.jsonl", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    ((), "give either --endpoint URL --model NAME or --local-model DIR"),
    (("--endpoint", "http://x/v1", "--model", "m", "--local-model", "/m"), "give either"),
    (("--endpoint", "http://x/v1"), "--model: required with --endpoint"),
    (("--endpoint", "x.com", "--model", "m"), "--endpoint: 'x.com' must start with http"),
    (("--local-model", "/m", "--concurrency", "0"), "--concurrency: must be at least 1"),
    (("--local-model", "/m", "--retries", "-1"), "--retries: must be at least 0"),
    (("--local-model", "/m", "--timeout", "0"), "--timeout: must be positive"),
])
def test_usage_errors_name_the_flag(argv: tuple[str, ...], message: str) -> None:
    assert any(message in e for e in usage_errors(parse(*argv)))


def test_good_flags_have_no_usage_errors() -> None:
    assert usage_errors(parse("--endpoint", "https://api.openai.com/v1", "--model", "gpt-4o")) \
        == []


@pytest.mark.parametrize(("content", "seconds", "message"), [
    (b"not a wav file at all", 0, r"p\.jsonl:1: reference\.audio: .*ref\.wav is not readable"),
    (None, 0.0, r"p\.jsonl:1: reference\.audio: .*lasts 0\.0 s"),
    (None, 61.0, r"p\.jsonl:1: reference\.audio: .*lasts 61\.0 s; .* at most 60\.0 s"),
    (None, 2.0, None)])
def test_a_voice_prompt_must_be_short_readable_audio(tmp_path: Path, content: bytes | None,
                                                      seconds: float, message: str | None
                                                      ) -> None:
    import numpy as np
    import soundfile as sf

    from rlaif.data import load_prompts

    ref = tmp_path / "ref.wav"
    if content is None:
        sf.write(ref, np.zeros(int(seconds * 16000), dtype=np.float32), 16000)
    else:
        ref.write_bytes(content)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"text": "Is it?", "labels": LABELS,  # the module's
                                   "reference": {"audio": "ref.wav", "text": "hi"}}) + "\n")
    if message is None:
        (prompt,) = load_prompts(prompts)
        assert prompt.reference is not None and prompt.reference.audio == ref
    else:
        with pytest.raises(PromptFileError, match=message):
            load_prompts(prompts)
