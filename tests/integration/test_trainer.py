"""The trainer end to end on this machine: real reward servers (Whisper tiny.en and the
acoustic judge, started with ``rlaif reward serve``), real DeepSpeed on CPU with gloo,
the built-in prosody-lm policy over espeak-ng."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlaif.api.validation import load_job
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.trainer.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
SERVERS = {"intelligibility": ("asr", "builtin:whisper-tiny.en", 0.3),
           "alignment": ("judge", "builtin:acoustic", 0.7)}


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RewardEndpoint]]:
    logs = tmp_path_factory.mktemp("servers")
    procs, eps = [], []
    for name, (kind, model, weight) in SERVERS.items():
        port = free_port()
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "rlaif.cli", "reward", "serve", "--kind", kind,
                 "--model", model, "--host", "127.0.0.1", "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        eps.append(RewardEndpoint(name=name, kind=kind, url=f"http://127.0.0.1:{port}",
                                  weight=weight))
    try:
        for ep in eps:
            wait_for(lambda ep=ep: ready(ep.url), 180, f"reward server {ep.name}")
        yield eps
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def write_config(tmp: Path, endpoints: list[RewardEndpoint], *, steps: int, ranks: int = 1,
                 zero: int = 2, every: int = 2) -> tuple[Path, TrainerConfig]:
    spec = load_job(REPO / "examples" / "quickstart-cpu.yaml").spec
    spec.rewards = [r for r in spec.rewards if r.name in SERVERS]
    spec.evaluation = None  # held-out evaluation has its own tests
    spec.steps, spec.checkpoint.every_steps = steps, every
    spec.grpo.batch_size = 1
    spec.trainer.processes_per_node = ranks
    spec.trainer.deepspeed.zero_stage = zero
    config = TrainerConfig(job_name="it", spec=spec, rewards=endpoints,
                           output_dir=str(tmp / "out"), checkpoint_dir=str(tmp / "ckpt"),
                           metrics_port=free_port(), base_dir=str(REPO / "examples"))
    path = tmp / "trainer.yaml"
    path.write_text(config.dump())
    return path, config


def start_trainer(config: Path, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()  # an in-process rank of another test set these
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env["MASTER_PORT"] = str(free_port())
    env.update(extra)
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "rlaif.cli", "train", "--config",
                                 str(config)], stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
            return True
    except OSError:
        return False


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.endswith("}")]


@pytest.mark.slow
def test_two_ranks_under_deepspeed_zero2_stay_in_sync(
        tmp_path: Path, endpoints: list[RewardEndpoint]) -> None:
    config_path, config = write_config(tmp_path, endpoints, steps=2, ranks=2, zero=2)
    proc = start_trainer(config_path, tmp_path / "trainer.log")
    assert proc.wait(timeout=500) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    out = Path(config.output_dir)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["param_norm_spread"] == 0.0 for r in records)  # identical LoRA weights
    assert records[0]["param_norm"] != records[-1]["param_norm"]  # and they did train
    assert all(r["samples_per_second"] > 0 and 0 <= r["reward_mean"] <= 1 for r in records)
    assert {"reward/intelligibility", "reward/alignment", "intelligibility/wer", "kl",
            "time_generate", "time_reward_wait", "time_update"} <= set(records[-1])
    final = Path(config.checkpoint_dir) / "step-00000002"
    assert (final / "rng-rank0.pt").exists() and (final / "rng-rank1.pt").exists()
    assert json.loads((final / "meta.json").read_text())["data_position"] == 4
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "summary.json").exists() and (out / "reward_curve.png").exists()
    assert len(list((out / "samples" / "step-000001").glob("*.wav"))) == 4


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_logs_each_step_once(
        tmp_path: Path, endpoints: list[RewardEndpoint]) -> None:
    config_path, config = write_config(tmp_path, endpoints, steps=5, ranks=1, zero=0)
    out, log = Path(config.output_dir), tmp_path / "trainer.log"
    proc = start_trainer(config_path, log)
    try:
        wait_for(lambda: 3 in steps_logged(out), 300, "step 3")
        with urllib.request.urlopen(f"http://127.0.0.1:{config.metrics_port}/metrics") as r:
            exposition = r.read().decode()
        assert "rlaif_step 3.0" in exposition or "rlaif_step 4.0" in exposition
        assert 'rlaif_reward_mean_by_name{reward="alignment"}' in exposition
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "summary.json").exists()
    proc = start_trainer(config_path, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert steps_logged(out) == [1, 2, 3, 4, 5]
    assert "resumed from" in log.read_text() and "step-00000002" in log.read_text()
    assert sorted(p.name for p in Path(config.checkpoint_dir).iterdir()) == [
        "step-00000004", "step-00000005"]  # keep: 2


@pytest.mark.slow
def test_sigterm_on_one_node_checkpoints_the_whole_gang_which_resumes(
        tmp_path: Path, endpoints: list[RewardEndpoint]) -> None:
    """Two nodes of one rank each (torchrun, static rendezvous, as in pods); SIGTERM reaches
    only node 1's first process, as when the kubelet evicts one pod of the gang."""
    config_path, config = write_config(tmp_path, endpoints, steps=3, ranks=1, zero=0, every=10)
    two_nodes = TrainerConfig.load(config_path)
    two_nodes.spec.trainer.nodes = 2
    two_nodes.spec.grpo.group_size = 2  # cheaper steps; the stop logic is what is tested
    config_path.write_text(two_nodes.dump())
    out, log = Path(config.output_dir), tmp_path / "trainer.log"

    def gang() -> list[subprocess.Popen[bytes]]:
        port = str(free_port())
        return [start_trainer(config_path, log, MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                              NODE_RANK=str(rank)) for rank in (0, 1)]

    nodes = gang()
    try:
        # Rank 0 serves its metrics once training has begun: stop during step 1.
        wait_for(lambda: metrics_up(config.metrics_port), 300, "training to begin")
        nodes[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert codes == [130, 130], log.read_text()[-3000:]
    stopped_at = steps_logged(out)[-1]
    assert stopped_at < 3 and (Path(config.checkpoint_dir) / f"step-{stopped_at:08d}").exists()
    nodes = gang()
    assert [p.wait(timeout=300) for p in nodes] == [0, 0], log.read_text()[-3000:]
    assert steps_logged(out) == [1, 2, 3], "the resumed gang continues at the next step"
    assert f"step-{stopped_at:08d}" in log.read_text()


@pytest.mark.slow
def test_async_rollouts_on_two_ranks_survive_sigkill_and_resume(
        tmp_path: Path, endpoints: list[RewardEndpoint]) -> None:
    """spec.grpo.asyncRollouts: 1 under ZeRO-2 on two ranks: the ranks stay in lockstep, a
    SIGKILL loses the sampled-ahead rollout only, and the resumed run logs each step once,
    its first step sampled again on-policy."""
    config_path, config = write_config(tmp_path, endpoints, steps=3, ranks=2, zero=2)
    ahead = TrainerConfig.load(config_path)
    ahead.spec.grpo.async_rollouts, ahead.spec.grpo.group_size = 1, 2
    config_path.write_text(ahead.dump())
    out, log = Path(config.output_dir), tmp_path / "trainer.log"
    proc = start_trainer(config_path, log)
    try:
        wait_for(lambda: 2 in steps_logged(out), 400, "step 2")  # step 3: sampled, in scoring
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = start_trainer(config_path, log)
    assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    resumed_at = 2 if "step-00000002 (step 2)" in log.read_text() else 3
    assert f"step-{resumed_at:08d} (step {resumed_at})" in log.read_text()
    assert [r["staleness"] for r in records] == [0.0 if s in (1, resumed_at + 1) else 1.0
                                                 for s in range(1, 4)]
    assert all(r["param_norm_spread"] == 0.0 for r in records)
