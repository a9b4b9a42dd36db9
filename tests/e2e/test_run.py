"""``rlaif run`` as a user runs it: exit codes, Ctrl-C, a dying reward server, no leftovers.

Jobs here use only the acoustic judge (fast to load) so each run costs seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def job_file(tmp: Path, steps: int, **spec: object) -> Path:
    job = yaml.safe_load((REPO / "examples" / "quickstart-cpu.yaml").read_text())
    job["spec"]["rewards"] = [{"name": "alignment", "kind": "judge", "model": "builtin:acoustic",
                               "weight": 1.0}]
    job["spec"]["data"]["prompts"] = str(REPO / "examples" / "data" / "quickstart-prompts.jsonl")
    del job["spec"]["evaluation"]  # held-out evaluation has its own tests
    job["spec"].update(steps=steps, checkpoint={"everySteps": 50, "keep": 2},
                       grpo={**job["spec"]["grpo"], "batchSize": 1}, **spec)
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _as_in_a_terminal() -> None:
    """SIGINT as a foreground command in a terminal has it: a suite started in the
    background by a script (``make test &``) ignores SIGINT, its children inherit that, and
    Python then installs no Ctrl-C handler, so the Ctrl-C test would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(job: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rlaif.cli", "run", str(job), "--out",
                             str(out), "--no-progress", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_in_a_terminal)


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.endswith("}")]


def wait_for_step(out: Path, step: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while step not in steps_logged(out):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"step {step} never logged"
        time.sleep(0.2)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(procs: list[psutil.Process]) -> None:
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(p.cmdline()) for p in alive]


def test_invalid_job_exits_2_naming_the_field(tmp_path: Path) -> None:
    job = job_file(tmp_path, 5)
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["rewards"][0]["model"] = "/no/such/model"
    job.write_text(yaml.safe_dump(doc))
    proc = start_run(job, tmp_path / "out")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "spec.rewards[0].model" in err and "/no/such/model" in err


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_a_rerun_resumes(tmp_path: Path) -> None:
    job, out = job_file(tmp_path, 40), tmp_path / "out"
    proc = start_run(job, out)
    wait_for_step(out, 2, proc)
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert_all_gone(children)
    stopped_at = steps_logged(out)[-1]
    assert (out / "checkpoints" / f"step-{stopped_at:08d}" / "meta.json").exists()
    proc = start_run(job, out, "--steps", str(stopped_at + 2))
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert steps_logged(out) == list(range(1, stopped_at + 3))
    assert stdout.count(f"resuming from step {stopped_at} (checkpoint ") == 1
    printed = [int(line.split()[1].split("/")[0]) for line in stdout.splitlines()
               if line.startswith("step ")]
    assert printed == [stopped_at + 1, stopped_at + 2]  # the old steps are not re-printed
    assert "done: reward" in stdout and (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops_every_child(tmp_path: Path) -> None:
    job, out = job_file(tmp_path, 40), tmp_path / "out"
    proc = start_run(job, out)
    wait_for_step(out, 1, proc)
    children = descendants(proc.pid)
    assert any("reward" in p.cmdline() for p in children)
    proc.terminate()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert_all_gone(children)
    stopped_at = steps_logged(out)[-1]
    assert (out / "checkpoints" / f"step-{stopped_at:08d}" / "meta.json").exists()


@pytest.mark.slow
def test_reward_server_dying_fails_the_run_naming_it(tmp_path: Path) -> None:
    job, out = job_file(tmp_path, 40), tmp_path / "out"
    proc = start_run(job, out)
    wait_for_step(out, 1, proc)
    children = descendants(proc.pid)
    server = next(p for p in children if "--kind" in p.cmdline() and "judge" in p.cmdline())
    os.kill(server.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "reward 'alignment'" in err and "failed after" in err  # the client's retries
    assert "reward server 'alignment' exited" in err
    assert "running the same command again" in err  # resumes, or starts over: it says which
    assert_all_gone(children)
