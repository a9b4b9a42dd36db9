"""The judge's prompt (no anchoring example, the text read), dimension dropping, and the
judge settings' validation and wiring (API model -> server flags -> scorer)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml

from rlaif.api.labels import DIMENSIONS, LabelSchema, first_json_object
from rlaif.api.models import JudgeSpec, RewardServer
from rlaif.api.validation import InvalidManifest, parse_object
from rlaif.constants import JUDGE_API_KEY_ENV, SAMPLE_RATE
from rlaif.operator.server_builders import build_deployment
from rlaif.rewards.acoustic import AcousticJudge
from rlaif.rewards.judge import (
    PLACEHOLDER,
    answer_schema,
    judge_prompt,
    labels_problem,
    parse_judgement,
    score_answer,
)
from rlaif.rewards.scoring import ScoreInput
from rlaif.rewards.server import ServerSettings, build_scorer, load_judge_settings
from tests.conftest import EXAMPLES

SCHEMA = LabelSchema()
HEARD = ("emotion", "speechRate", "intonation")
TARGETS = {"structure": "Statement", "emotion": "Neutral", "speechRate": "Medium Slow",
           "intonation": "Declarative"}
VLLM_JUDGE = yaml.safe_load((EXAMPLES / "rewardserver-vllm-judge.yaml").read_text())


def item(labels: dict[str, str] = TARGETS, text: str = "") -> ScoreInput:
    return ScoreInput("s1", np.zeros(SAMPLE_RATE, np.float32), text=text, labels=dict(labels))


# ------------------------------------------------------------------------------ the prompt


@pytest.mark.parametrize("dimensions", [DIMENSIONS, HEARD, ("intonation",)])
def test_prompt_shows_the_answer_form_with_placeholders_only(dimensions) -> None:
    prompt = judge_prompt(SCHEMA, dimensions)
    form = first_json_object(prompt.rsplit("\n", 1)[1])
    assert form == dict.fromkeys(dimensions, PLACEHOLDER)
    # No value of any list appears outside its own list line (no anchoring example).
    value_lines = [line for line in prompt.splitlines() if line.startswith('- "')]
    assert len(value_lines) == len(dimensions)
    rest = "\n".join(line for line in prompt.splitlines() if line not in value_lines)
    for dim in DIMENSIONS:
        assert not [v for v in SCHEMA.values(dim) if f'"{v}"' in rest], dim
    anchored = json.dumps({dim: SCHEMA.values(dim)[0] for dim in dimensions})
    assert anchored not in prompt


def test_prompt_lists_only_the_kept_dimensions() -> None:
    prompt = judge_prompt(SCHEMA, HEARD)
    assert '"structure"' not in prompt and "Introduction" not in prompt
    for dim in HEARD:
        assert f'- "{dim}": one of {json.dumps(SCHEMA.values(dim))}' in prompt


def test_prompt_quotes_the_text_read() -> None:
    prompt = judge_prompt(SCHEMA, HEARD, 'He said "stop" twice.')
    assert 'The speaker was reading: "He said \\"stop\\" twice."' in prompt
    assert "was reading" not in judge_prompt(SCHEMA, HEARD, "")


def test_answer_schema_enumerates_the_kept_values() -> None:
    schema = answer_schema(SCHEMA, HEARD)
    assert schema["required"] == list(HEARD) and schema["additionalProperties"] is False
    assert {dim: p["enum"] for dim, p in schema["properties"].items()} == {
        dim: SCHEMA.values(dim) for dim in HEARD}


# --------------------------------------------------------------------- dimension dropping


def test_score_is_the_share_over_the_kept_dimensions_only() -> None:
    answer = json.dumps({**TARGETS, "structure": "Question", "emotion": "Angry"})
    everything = score_answer(item(), answer, SCHEMA, DIMENSIONS)
    heard = score_answer(item(), answer, SCHEMA, HEARD)
    assert everything.score == pytest.approx(2 / 4)  # structure and emotion missed
    assert heard.score == pytest.approx(2 / 3)  # structure not counted at all
    assert set(heard.details["matched"]) == set(HEARD)
    assert "structure" not in heard.details["predicted"]


def test_an_answer_with_only_dropped_dimensions_is_unusable() -> None:
    answer = json.dumps({"structure": "Statement"})
    predicted, problem = parse_judgement(answer, SCHEMA, HEARD)
    assert predicted == dict.fromkeys(HEARD) and problem is not None
    result = score_answer(item(), answer, SCHEMA, HEARD)
    assert result.error is not None and result.error.startswith("judge answer unusable")
    assert "emotion: missing" in result.error and "structure" not in result.error.split("):")[0]


def test_an_item_without_kept_targets_cannot_be_judged() -> None:
    why = labels_problem(item({"structure": "Statement"}), HEARD)
    assert why == "labels: the judge needs target labels for at least one of " \
                  "emotion, speechRate, intonation"
    assert labels_problem(item({"emotion": "Neutral"}), HEARD) is None


def test_acoustic_judge_keeps_only_configured_dimensions() -> None:
    judge = AcousticJudge(SCHEMA, ("structure", "speechRate"))
    assert judge.scored == ("speechRate",)
    assert judge.check(item({"intonation": "Declarative"})) is not None
    with pytest.raises(ValueError, match=r"judge.dimensions: the acoustic judge scores only"):
        AcousticJudge(SCHEMA, ("structure",))


# ----------------------------------------------------------------- settings and validation


def _invalid(doc: dict) -> list[str]:
    with pytest.raises(InvalidManifest) as caught:
        parse_object(doc)
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(("change", "message"), [
    ({"dimensions": ["emotion", "pitch"]},
     "spec.judge.dimensions[1]: must be 'structure', 'emotion', 'speechRate' or 'intonation'"),
    ({"dimensions": []}, "spec.judge.dimensions: List should have at least 1 item"),
    ({"dimensions": ["emotion", "emotion"]},
     "spec.judge: dimensions: each dimension at most once, got ['emotion', 'emotion']"),
    ({"endpoint": None}, "spec.judge: endpoint: required for backend: openai"),
    ({"backend": "local"}, "spec.judge: endpoint and apiKeySecretRef: only for backend: openai"),
    ({"concurrency": 0}, "spec.judge.concurrency: must be at least 1"),
])
def test_judge_settings_errors_name_the_field(change, message) -> None:
    doc = copy.deepcopy(VLLM_JUDGE)
    doc["spec"]["judge"].update(change)
    doc["spec"]["judge"] = {k: v for k, v in doc["spec"]["judge"].items() if v is not None}
    errors = _invalid(doc)
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_judge_settings_only_for_kind_judge() -> None:
    doc = copy.deepcopy(VLLM_JUDGE)
    doc["spec"]["kind"] = "asr"
    assert _invalid(doc) == ["spec: judge: only for kind: judge (this reward is kind asr)"]


def test_a_served_model_name_is_not_a_directory_but_a_local_one_must_be() -> None:
    assert isinstance(parse_object(VLLM_JUDGE), RewardServer)
    doc = copy.deepcopy(VLLM_JUDGE)
    del doc["spec"]["judge"]
    assert _invalid(doc) == ["spec.model: 'Qwen/Qwen2-Audio-7B-Instruct' must be an absolute "
                             "directory path or builtin:NAME"]


def test_job_reward_passes_its_judge_settings_on() -> None:
    job = yaml.safe_load((EXAMPLES / "quickstart-cpu.yaml").read_text())
    judge = next(r for r in job["spec"]["rewards"] if r.get("kind") == "judge")
    judge["judge"] = {"dimensions": ["speechRate"]}
    parsed = parse_object(job)
    reward = next(r for r in parsed.spec.rewards if r.kind == "judge")  # type: ignore[union-attr]
    assert reward.judge is not None and reward.judge.dimensions == ["speechRate"]
    judge["serverRef"] = {"name": "shared"}
    del judge["kind"], judge["model"]
    assert any("judge: only for kind: judge" in e for e in _invalid(job))


def test_deployment_carries_the_settings_and_the_key_reference_never_the_key() -> None:
    server = parse_object(VLLM_JUDGE)
    assert isinstance(server, RewardServer)
    box = build_deployment(server)["spec"]["template"]["spec"]["containers"][0]
    flags = box["args"][box["args"].index("--judge") + 1]
    assert load_judge_settings(flags) == server.spec.judge.model_copy(  # type: ignore[union-attr]
        update={"api_key_secret_ref": None})
    assert {"name": JUDGE_API_KEY_ENV, "valueFrom": {"secretKeyRef": {
        "name": "vllm-api-key", "key": "key"}}} in box["env"]


def test_server_flag_errors_name_the_flag_and_field() -> None:
    with pytest.raises(ValueError, match=r"^--judge: dimensions\[0\]: must be 'structure'"):
        load_judge_settings('{"dimensions": ["loudness"]}')
    with pytest.raises(ValueError, match=r"^--judge: .*Invalid JSON"):
        load_judge_settings("{dimensions")
    assert load_judge_settings(None) == JudgeSpec()


def test_server_builds_the_served_judge_without_a_model_directory(monkeypatch) -> None:
    monkeypatch.setenv(JUDGE_API_KEY_ENV, "sk-test")
    judge = load_judge_settings('{"backend": "openai", "endpoint": "http://vllm:8000/v1", '
                                '"dimensions": ["emotion"]}')
    scorer = build_scorer(ServerSettings(kind="judge", model="Qwen/Qwen2-Audio-7B-Instruct",
                                         judge=judge))
    from rlaif.rewards.judge_openai import ServedJudge

    assert isinstance(scorer, ServedJudge)
    assert (scorer.api_key, scorer.dimensions) == ("sk-test", ("emotion",))
