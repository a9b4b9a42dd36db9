"""Hostile manifests: every failure is a message naming the file (and line), never a traceback.

Covers the YAML loader (encoding, nesting, aliases, bad tags, empty files), the schema's
finite floats, maxima and typed resources, reward kind vs model, and the mutation script.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlaif.api.models import RLAIFJob
from rlaif.api.validation import InvalidManifest, load_file
from tests.conftest import EXAMPLES, REPO

QUICKSTART = yaml.safe_load((EXAMPLES / "quickstart-cpu.yaml").read_text())


def errors_of(tmp_path: Path, data: bytes) -> list[str]:
    file = tmp_path / "m.yaml"
    file.write_bytes(data)
    with pytest.raises(InvalidManifest) as info:
        load_file(file)
    messages = [str(e) for e in info.value.errors]
    assert messages and all(m.startswith(str(file)) for m in messages), messages
    return messages


def with_value(path: str, value: Any) -> bytes:
    doc = copy.deepcopy(QUICKSTART)
    target = doc
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[int(last) if last.isdigit() else last] = value
    return yaml.dump(doc).encode()


@pytest.mark.parametrize(("data", "message"), [
    (b"\xff\xfekind: x\n", "line 1: not UTF-8 text (byte 0xff at offset 0)"),
    (b"kind: RLAIFJob\nx: " + b"[" * 5000, "line 2, column"),
    (b"x: " + b"[" * 80 + b"]" * 80, "nested more than 64 levels deep"),
    (b"spec: {steps: " + b"9" * 5000 + b"}", "Exceeds the limit (4300 digits)"),
    (b"kind: !!int abc\n", "line 1, column 7: YAML error: cannot read 'abc' as int"),
    (b"kind: !!timestamp abc\n", "cannot read 'abc' as timestamp"),
    (b"kind: !!bool maybe\n", "cannot read 'maybe' as bool"),
    (b"kind: [RLAIFJob]\n", "kind: must be one of ['RLAIFJob', 'RewardServer'], got ['RLAIFJob']"),
    (b"loop: &l [*l]\n", "YAML error"),
    (b"", "no manifest: the file is empty or only comments"),
    (b"# just a comment\n---\n", "no manifest"),
])
def test_unreadable_files_are_messages_with_file_and_line(tmp_path, data, message) -> None:
    assert any(message in m for m in errors_of(tmp_path, data))


def test_dates_stay_strings_as_in_kubernetes(tmp_path) -> None:
    messages = errors_of(tmp_path, with_value("metadata.name", "2024-13-01"))
    assert any("metadata.name: must match pattern" in m for m in messages)


def test_alias_bombs_are_refused_before_expansion(tmp_path) -> None:
    levels = "".join(f"{k}: &{k} [{', '.join([f'*{p}' if p else '1'] * 9)}]\n"
                     for p, k in zip(["", "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi",
                                     strict=True))
    messages = errors_of(tmp_path, (levels + (EXAMPLES / "quickstart-cpu.yaml").read_text())
                         .encode())
    assert any("aliases expand to more than 10000 extra nodes" in m for m in messages)


def test_a_few_aliases_are_fine(tmp_path) -> None:
    text = (EXAMPLES / "quickstart-cpu.yaml").read_text()
    file = tmp_path / "ok.yaml"
    file.write_text("x-defaults: &d {cpu: 1}\n" + text.replace("spec:\n", "spec:\n", 1))
    with pytest.raises(InvalidManifest, match="x-defaults"):  # unknown field, but no bomb
        load_file(file)


@pytest.mark.parametrize(("path", "value", "message"), [
    ("spec.rewards.0.weight", math.inf, "spec.rewards[0].weight: must be a finite number"),
    ("spec.grpo.learningRate", math.inf, "spec.grpo.learningRate: must be at most 1.0"),
    ("spec.grpo.temperature", math.nan, "spec.grpo.temperature"),
    ("spec.grpo.klCoef", math.inf, "spec.grpo.klCoef"),
    ("spec.trainer.deepspeed.gradientClipping", math.inf, "gradientClipping"),
    ("spec.steps", 10**30, "spec.steps: must be at most 10000000"),
    ("spec.grpo.groupSize", 10**9, "spec.grpo.groupSize: must be at most 1024"),
    ("spec.rewards.0.replicas", 10**12, "spec.rewards[0].replicas: must be at most 1000"),
    ("spec.seed", 2**64, "spec.seed: must be less than 9223372036854775808"),
    ("spec.rewards.0.resources", {"limits": {"cpu": [[1, 2]]}},
     "resources: limits.cpu: must be a quantity such as 500m, 4Gi or 2"),
    ("spec.rewards.0.resources", {"limitz": {"cpu": 1}}, "resources: limitz: Extra inputs"),
    ("spec.rewards.0.model", "builtin:dnsmos",
     "spec.rewards[0].model: builtin:dnsmos serves kind mos, not asr (set kind: mos)"),
    ("spec.policy.model", "builtin:acoustic",
     "builtin:acoustic is a reward model (kind judge), not a policy"),
])
def test_out_of_range_values_are_refused(tmp_path, path, value, message) -> None:
    messages = errors_of(tmp_path, with_value(path, value))
    assert any(message in m for m in messages), messages


def test_typed_resources_accept_kubernetes_quantities(tmp_path) -> None:
    file = tmp_path / "ok.yaml"
    file.write_bytes(with_value("spec.rewards.0.resources", {
        "limits": {"nvidia.com/gpu": 1, "memory": "4Gi"}, "requests": {"cpu": "500m"}}))
    (job,) = load_file(file)
    assert isinstance(job, RLAIFJob)
    assert job.spec.rewards[0].resources["limits"] == {"nvidia.com/gpu": 1, "memory": "4Gi"}


def test_a_directory_of_the_wrong_kind_is_reported_with_check_paths(tmp_path) -> None:
    model = tmp_path / "not-whisper"
    model.mkdir()
    (model / "config.json").write_text("{}")
    file = tmp_path / "job.yaml"
    file.write_bytes(with_value("spec.rewards.0.model", str(model)))
    load_file(file)  # a cluster path need not exist here
    with pytest.raises(InvalidManifest, match=r"spec.rewards\[0\].model: model directory "
                                              r".* has no model.bin: not a model of kind asr"):
        load_file(file, check_paths=True)


def test_cli_checks_every_file_and_exits_1(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff")
    result = subprocess.run([sys.executable, "-m", "rlaif.cli", "validate", str(bad),
                             str(EXAMPLES / "quickstart-cpu.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and f"{bad}: line 1: not UTF-8" in result.stderr
    assert "RLAIFJob/quickstart is valid" in result.stdout


finite_or_not = st.floats() | st.integers() | st.integers(min_value=2**62, max_value=2**70)
numeric_paths = st.sampled_from([
    "spec.steps", "spec.seed", "spec.rewards.0.weight", "spec.rewards.1.replicas",
    "spec.grpo.learningRate", "spec.grpo.groupSize", "spec.grpo.temperature",
    "spec.grpo.klCoef", "spec.trainer.deepspeed.gradientClipping", "spec.trainer.nodes"])


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=numeric_paths, value=finite_or_not)
def test_accepted_numbers_are_finite_and_bounded(tmp_path, path: str, value: Any) -> None:
    file = tmp_path / "n.yaml"
    file.write_bytes(with_value(path, value))
    try:
        (job,) = load_file(file)
    except InvalidManifest as exc:
        assert all(str(e).startswith(f"{file}: ") for e in exc.errors)
        return
    assert isinstance(job, RLAIFJob)
    spec = job.spec
    numbers = [spec.rewards[0].weight, spec.grpo.learning_rate, spec.grpo.temperature,
               spec.grpo.kl_coef, spec.trainer.deepspeed.gradient_clipping]
    assert all(math.isfinite(n) for n in numbers)
    assert 0 <= spec.seed < 2**63 and 1 <= spec.steps <= 10**7


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_never_raise_anything_else(tmp_path, data: bytes) -> None:
    file = tmp_path / "b.yaml"
    file.write_bytes(data)
    try:
        load_file(file)
    except InvalidManifest as exc:
        assert exc.errors


def test_mutation_script_finds_no_traceback_and_no_accepted_invalid() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "mutate_manifests.py"),
                             "--cases", "150", "--seed", "7"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0 tracebacks, 0 accepted invalid" in result.stdout
