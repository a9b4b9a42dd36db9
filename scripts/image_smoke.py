"""Smoke checks of the CPU reward and trainer images: too slow for the test suite (each image
takes minutes to build and weighs gigabytes), so a script that prints its figures; the
operator image's checks are tests (tests/integration/test_operator_image.py).

  .venv/bin/python scripts/image_smoke.py reward    # builtin:dnsmos and whisper-tiny.en
  .venv/bin/python scripts/image_smoke.py trainer   # one quickstart GRPO step (+ reward)

Each builds its images air-gapped first (scripts/images.sh, OFFLINE=1) and runs them with
scripts/image_run.py: uid 10001, read-only root, tmpfs /tmp, the host's network so that the
servers are reachable. reward: each server in the image scores a real espeak-ng clip the same
as the same server in .venv does. trainer: the quickstart job's three reward servers from the
reward image, and one GRPO step of the trainer image against them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlaif.config import RewardEndpoint, TrainerConfig  # noqa: E402
from rlaif.reward_client import ScoreItem  # noqa: E402
from rlaif.rewards.server import ServerSettings  # noqa: E402
from rlaif.runner import prepare_job  # noqa: E402
from tests.integration.reward_support import (  # noqa: E402
    SENTENCE,
    free_port,
    post,
    running_server,
    speak,
    wait_ready,
)

RUN = [sys.executable, str(REPO / "scripts" / "image_run.py"), "--network", "host"]
QUICKSTART = REPO / "examples" / "quickstart-cpu.yaml"


def build(target: str) -> str:
    """The CPU image of a target, built air-gapped; its tag."""
    start = time.monotonic()
    done = subprocess.run([str(REPO / "scripts" / "images.sh"), target], cwd=REPO,
                          env={**os.environ, "OFFLINE": "1", "PYTHON": sys.executable},
                          stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"building {target} failed (exit {done.returncode})")
    print(f"{target}: image ready in {time.monotonic() - start:.0f} s", flush=True)
    return done.stdout.split()[-1]


@contextlib.contextmanager
def image_server(tag: str, kind: str, model: str, *extra: str,
                 volume: str | None = None) -> Iterator[str]:
    """`rlaif reward serve` in the reward image on a free port; its URL once ready."""
    port = free_port()
    argv = [*RUN, *([f"--volume={volume}"] if volume else []), tag, "--kind", kind, "--model",
            model, "--host", "127.0.0.1", "--port", str(port), *extra]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            start = time.monotonic()
            try:
                wait_ready(url, timeout_s=300)
            except TimeoutError:
                log.seek(0)
                tail = log.read().decode()[-3000:]
                raise SystemExit(f"{kind} {model} never ready:\n{tail}") from None
            print(f"  {kind} {model}: ready in {time.monotonic() - start:.1f} s", flush=True)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def check_reward() -> None:
    tag = build("reward")
    item = ScoreItem(id="speech", audio=speak(SENTENCE), text=SENTENCE).to_wire()
    body = json.dumps({"items": [item]}).encode()
    for kind, model in (("mos", "builtin:dnsmos"), ("asr", "builtin:whisper-tiny.en")):
        with image_server(tag, kind, model) as url:
            status, answer = post(url, body)
        if status != 200:
            raise SystemExit(f"{kind}: HTTP {status} {answer}")
        with running_server(ServerSettings(kind=kind, model=model)) as local:
            _, expected = post(local.url, body)
        got, want = answer["scores"][0]["score"], expected["scores"][0]["score"]
        print(f"  {kind}: score {got:.4f} in the image, {want:.4f} in .venv", flush=True)
        if abs(got - want) > 1e-3:
            raise SystemExit(f"{kind}: the image scores {got}, .venv {want}")


def check_trainer() -> None:
    reward_tag, trainer_tag = build("reward"), build("trainer")
    job = prepare_job(QUICKSTART, steps=1, ranks=1)
    job.spec.evaluation = None  # one training step is the smoke test
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        out = Path(tmp)
        out.chmod(0o777)  # written by uid 10001
        schema = out / "label-schema.json"
        schema.write_text(json.dumps(job.spec.label_schema.model_dump(by_alias=True)))
        endpoints = []
        for reward in job.spec.rewards:
            assert reward.kind is not None and reward.model is not None
            url = stack.enter_context(image_server(
                reward_tag, reward.kind, reward.model, "--label-schema",
                "/run/rlaif/label-schema.json", volume=f"{out}:/run/rlaif"))
            endpoints.append(RewardEndpoint(name=reward.name, kind=reward.kind, url=url,
                                            weight=reward.weight))
        config = TrainerConfig(job_name=job.metadata.name, namespace=job.metadata.namespace,
                               spec=job.spec, rewards=endpoints, output_dir="/out",
                               checkpoint_dir="/out/checkpoints", metrics_port=free_port(),
                               base_dir="/examples")
        (out / "trainer.yaml").write_text(config.dump())
        start = time.monotonic()
        done = subprocess.run(
            [*RUN, f"--volume={out}:/out:rw", f"--volume={QUICKSTART.parent}:/examples",
             f"--env=MASTER_PORT={free_port()}", trainer_tag, "train", "--config",
             "/out/trainer.yaml"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=900)
        if done.returncode:
            log = Path(tempfile.gettempdir()) / "rlaif-image-smoke-trainer.log"
            log.write_text(done.stdout)
            raise SystemExit(f"trainer exited {done.returncode} (whole log: {log}):\n"
                             f"{done.stdout[-3000:]}")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        steps = [r for r in records if r.get("step") == 1]
        if not steps or steps[-1].get("reward_mean") is None:
            raise SystemExit(f"no scored step 1 in metrics.jsonl: {records}")
        print(f"trainer: step 1 in {time.monotonic() - start:.0f} s (process start included), "
              f"mean reward {steps[-1]['reward_mean']:.3f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", choices=["reward", "trainer"])
    args = parser.parse_args()
    if args.image == "reward":
        check_reward()
    else:
        check_trainer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
