"""`rlaif validate`: every example passes; bad manifests fail with field paths and exit 1."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlaif.api.models import RLAIFJob
from rlaif.api.validation import InvalidManifest, load_file, parse_object
from tests.conftest import EXAMPLES

QUICKSTART = yaml.safe_load((EXAMPLES / "quickstart-cpu.yaml").read_text())
DLPO = yaml.safe_load((EXAMPLES / "dlpo-wavegrad2.yaml").read_text())


def rlaif(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_every_example_validates() -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    result = rlaif("validate", *files)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == len(files)


def test_defaults_follow_rlaif_spa() -> None:
    doc = {"apiVersion": "rlaif.dev/v1alpha1", "kind": "RLAIFJob", "metadata": {"name": "d"},
           "spec": {"policy": {"kind": "codec-lm", "model": "/m", "codec": "/c"},
                    "data": {"prompts": "/p.jsonl"},
                    "rewards": [{"name": "asr", "kind": "asr", "model": "/w", "weight": 0.3}]}}
    job = parse_object(doc)
    assert isinstance(job, RLAIFJob)
    spec = job.spec
    assert (spec.grpo.learning_rate, spec.grpo.batch_size, spec.grpo.group_size,
            spec.grpo.kl_coef, spec.grpo.clip_epsilon) == (5e-6, 1, 4, 0.01, 0.2)
    assert (spec.policy.lora.r, spec.policy.lora.alpha) == (8, 32)
    assert spec.label_schema.speech_rate[0] == "Extremely Slow"
    assert len(spec.label_schema.structure) == 20 and len(spec.label_schema.emotion) == 10


def _mutate(base: dict, path: str, value: object) -> dict:
    doc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


_DELETE = object()

INVALID = [
    (QUICKSTART, "spec.rewards.1.weight", 0, "spec.rewards[1].weight", "greater than 0"),
    (QUICKSTART, "spec.rewards.1.weight", -1.5, "spec.rewards[1].weight", "greater than 0"),
    (QUICKSTART, "spec.rewards.2.name", "intelligibility", "spec.rewards[2].name", "duplicate"),
    (QUICKSTART, "spec.rewards.0.serverRef", {"name": "dnsmos"}, "spec.rewards[0]",
     "not both"),
    (QUICKSTART, "spec.rewards.0.kind", _DELETE, "spec.rewards[0].kind", "required unless"),
    (QUICKSTART, "spec.rewards.0.kind", "bleu", "spec.rewards[0].kind", "must be"),
    (QUICKSTART, "spec.algorithm", "dlpo", "spec.policy.kind", "dlpo needs a diffusion"),
    (DLPO, "spec.algorithm", "grpo", "spec.policy.kind", "grpo needs an autoregressive"),
    (QUICKSTART, "spec.grpo.groupSize", 1, "spec.grpo.groupSize", "at least 2"),
    (QUICKSTART, "spec.grpo.asyncRollouts", 2, "spec.grpo.asyncRollouts", "at most 1"),
    (DLPO, "spec.grpo", {"asyncRollouts": 1}, "spec.grpo.asyncRollouts", "grpo only"),
    (QUICKSTART, "spec.policy.kind", "codec-lm", "spec.policy.codec", "required for codec-lm"),
    (QUICKSTART, "spec.policy.labelInstruction", True, "spec.policy.labelInstruction",
     "only used by codec-lm"),
    (QUICKSTART, "spec.policy.model", "models/policy", "spec.policy.model", "absolute"),
    (QUICKSTART, "spec.policy.model", "builtin:nope", "spec.policy.model", "unknown built-in"),
    (QUICKSTART, "spec.grpo.learningRat", 1e-5, "spec.grpo.learningRat", "unknown field"),
    (QUICKSTART, "spec.rewards", [], "spec.rewards", "at least 1"),
    (QUICKSTART, "spec.steps", "many", "spec.steps", "valid integer"),
    (QUICKSTART, "spec.data", _DELETE, "spec.data", "required field is missing"),
    (QUICKSTART, "spec.rewards.0.name", "Bad_Name", "spec.rewards[0].name", "match pattern"),
    (DLPO, "spec.data.groundTruth", _DELETE, "spec.data.groundTruth", "ground-truth"),
    (QUICKSTART, "spec.trainer.deepspeed.zeroStage", 4, "spec.trainer.deepspeed.zeroStage",
     "at most 3"),
    (QUICKSTART, "spec.labelSchema", {"speechRate": ["Slow", "slow"]}, "spec.labelSchema",
     "unique"),
    (QUICKSTART, "kind", "TrainingJob", "kind", "must be one of"),
]


@pytest.mark.parametrize(("base", "where", "value", "path", "fragment"), INVALID,
                         ids=[f"{i[1]}={i[2]!r}"[:60] for i in INVALID])
def test_invalid_manifest_names_the_field(base: dict, where: str, value: object, path: str,
                                          fragment: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_object(_mutate(base, where, value))
    messages = [str(e) for e in info.value.errors]
    assert any(m.startswith(f"{path}:") and fragment in m for m in messages), messages


def test_cli_prints_file_and_path_and_exits_1(tmp_path: Path) -> None:
    bad = _mutate(QUICKSTART, "spec.rewards.1.weight", 0)
    file = tmp_path / "job.yaml"
    file.write_text(yaml.safe_dump(bad))
    result = rlaif("validate", str(file))
    assert result.returncode == 1
    assert f"{file}: spec.rewards[1].weight: must be greater than 0" in result.stderr


def test_multi_document_file_reports_each_document(tmp_path: Path) -> None:
    good = QUICKSTART
    bad = _mutate(QUICKSTART, "spec.steps", 0)
    file = tmp_path / "two.yaml"
    file.write_text(yaml.safe_dump_all([good, bad]))
    with pytest.raises(InvalidManifest) as info:
        load_file(file)
    assert [str(e) for e in info.value.errors] == [
        f"{file}#2: spec.steps: must be at least 1"]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("kind: RLAIFJob\nspec:\n  steps: [1, 2\n  rewards: x\n")
    result = rlaif("validate", str(file))
    assert result.returncode == 1
    assert f"{file}: line " in result.stderr and "YAML error" in result.stderr


def test_missing_model_directory_is_reported_with_check_paths(tmp_path: Path) -> None:
    doc = _mutate(DLPO, "spec.policy.model", str(tmp_path / "no-such-model"))
    file = tmp_path / "job.yaml"
    file.write_text(yaml.safe_dump(doc))
    assert rlaif("validate", str(file)).returncode == 0  # cluster paths need not exist here
    result = rlaif("validate", "--check-paths", str(file))
    assert result.returncode == 1
    assert (f"spec.policy.model: model directory '{tmp_path / 'no-such-model'}' does not exist"
            in result.stderr)


def test_builtin_package_models_resolve() -> None:
    from rlaif import modelref

    assert (modelref.resolve("builtin:whisper-tiny.en") / "model.bin").is_file()
    assert modelref.resolve("builtin:dnsmos").is_dir()


def test_version_and_help() -> None:
    from rlaif import __version__

    assert rlaif("--version").stdout.strip() == f"rlaif {__version__}"
    help_text = rlaif("--help").stdout
    for command in ("run", "validate", "crd", "operator", "train", "reward", "label"):
        assert command in help_text
