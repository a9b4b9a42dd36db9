"""The label schema's prompt text and answer parsing, shared by the labeller and the judges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.api.labels import DIMENSIONS, LabelSchema, first_json_object

SCHEMA = LabelSchema()


def test_describe_lists_every_allowed_value_of_every_dimension() -> None:
    text = SCHEMA.describe()
    for dim in DIMENSIONS:
        line = next(li for li in text.splitlines() if li.startswith(f'- "{dim}"'))
        assert json.loads(line.split("one of ", 1)[1]) == SCHEMA.values(dim)


def test_parse_answer_accepts_json_in_prose_and_returns_schema_spelling() -> None:
    answer = ('Here you go:\n```json\n{"Structure": "question", "EMOTION": " neutral ",'
              ' "Speech Speed": "medium  fast", "Tone": "interrogative"}\n```')
    labels, errors = SCHEMA.parse_answer(answer)
    assert errors == []
    assert labels == {"structure": "Question", "emotion": "Neutral",
                      "speechRate": "Medium Fast", "intonation": "Interrogative"}


def test_parse_answer_reports_off_list_and_missing_without_coercing() -> None:
    labels, errors = SCHEMA.parse_answer(
        '{"structure": "Statement", "emotion": "Happy", "speechRate": 3}')
    assert labels == {"structure": "Statement"}
    assert any(e.startswith("emotion: 'Happy' is not an allowed") for e in errors)
    assert any(e.startswith("speechRate: 3 is not an allowed") for e in errors)
    assert "intonation: missing" in errors


@pytest.mark.parametrize("answer", ["", "no json here", "{broken: json", "[1, 2]"])
def test_parse_answer_without_object_is_one_error(answer: str) -> None:
    labels, errors = SCHEMA.parse_answer(answer)
    assert labels == {} and len(errors) == 1 and errors[0].startswith("no JSON object")


def test_first_json_object_skips_invalid_braces() -> None:
    assert first_json_object('x {nope} y {"a": {"b": 1}} z') == {"a": {"b": 1}}


def test_schema_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "schema.yaml"
    path.write_text("emotion: [Calm, Angry]\nspeechRate: [Slow, Fast]\n")
    schema = LabelSchema.from_file(path)
    assert schema.emotion == ["Calm", "Angry"] and schema.structure == SCHEMA.structure


def test_schema_from_file_errors_name_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"speechRate": ["Only"]}))
    with pytest.raises(ValueError, match=r"schema\.json: speechRate: "):
        LabelSchema.from_file(path)
    with pytest.raises(ValueError, match="cannot read label schema"):
        LabelSchema.from_file(tmp_path / "missing.yaml")


def test_parse_answer_reads_the_papers_numbered_lines_but_not_broken_json() -> None:
    labels, errors = SCHEMA.parse_answer(
        "1. Structure: Question\n2. Emotion: Neutral\n3. Speech Speed: Slow\n"
        "4. Tone: Interrogative")
    assert errors == [] and labels == {"structure": "Question", "emotion": "Neutral",
                                       "speechRate": "Slow", "intonation": "Interrogative"}
    labels, errors = SCHEMA.parse_answer('{"structure": "Question", "emotion": "Neutral"')
    assert labels == {} and errors[0].startswith("no JSON object")
