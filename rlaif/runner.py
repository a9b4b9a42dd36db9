"""``rlaif run JOB.yaml``: the whole job on this machine, no cluster.

Validates the manifest and every model path before starting anything, starts each reward
server as a local process on a free port and waits for ``/readyz``, writes the trainer
config and runs ``rlaif train`` (which uses the DeepSpeed launcher for more than one rank),
follows metrics.jsonl with a progress bar, and on every exit path stops every child
process group it started. Running it again with the same ``--out`` resumes from the newest
checkpoint.

Exit codes: 0 done, 1 training failed, 2 invalid job, 3 a reward server did not start,
130 interrupted (Ctrl-C: the trainer checkpointed and stopped; run again to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlaif.api.models import RewardSpec, RLAIFJob
from rlaif.api.validation import FieldError, InvalidManifest, load_job
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.data import PromptFileError, load_prompts
from rlaif.trainer.evaluation import EVAL_KIND, PairedDifference
from rlaif.trainer.evaluation import PREFIX as EVAL_PREFIX
from rlaif.trainer.metrics import TENSORBOARD_DIR

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_REWARDS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
STOP_GRACE_S = 10.0
"""How long a child gets between SIGTERM and SIGKILL when the run is torn down."""


class RunError(RuntimeError):
    """Why the run could not go on, with the exit code to report."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- children


@dataclass
class Child:
    """A child process in its own process group (so its descendants die with it)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the whole group, SIGKILL what is left after ``grace_s``."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure no descendant outlives it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, stdin=subprocess.DEVNULL)
    return Child(name, proc, log)


# --------------------------------------------------------------------------- set-up


def prepare_job(path: Path, steps: int | None, ranks: int | None) -> RLAIFJob:
    """The validated job with command-line overrides; raises RunError(EXIT_INVALID)."""
    try:
        job = load_job(path, check_paths=True)
    except InvalidManifest as exc:
        raise RunError("\n".join(str(e) for e in exc.errors), EXIT_INVALID) from None
    errors = [FieldError(f"{path}.serverRef", "a shared RewardServer cannot run locally; "
                         "give it a kind and a model")
              for path, r in served_models(job) if r.server_ref is not None]
    if steps is not None:
        if steps < 1:
            errors.append(FieldError("--steps", "must be at least 1"))
        job.spec.steps = steps
    if ranks is not None:
        if ranks < 1:
            errors.append(FieldError("--ranks", "must be at least 1"))
        job.spec.trainer.processes_per_node = ranks
    job.spec.trainer.nodes = 1
    if errors:
        raise RunError("\n".join(f"{path}: {e}" for e in errors), EXIT_INVALID)
    prompts = Path(job.spec.data.prompts)
    if not prompts.is_absolute():
        prompts = path.resolve().parent / prompts
    try:
        load_prompts(prompts, job.spec.label_schema)
    except PromptFileError as exc:
        raise RunError(f"{path}: spec.data.prompts: {exc}", EXIT_INVALID) from None
    if job.spec.evaluation is not None:
        heldout = Path(job.spec.evaluation.prompts)
        try:
            load_prompts(heldout if heldout.is_absolute() else path.resolve().parent / heldout,
                         job.spec.label_schema)
        except PromptFileError as exc:
            raise RunError(f"{path}: spec.evaluation.prompts: {exc}", EXIT_INVALID) from None
    return job


def served_models(job: RLAIFJob) -> list[tuple[str, RewardSpec]]:
    """Every reward and evaluator with its field path: the servers a local run starts."""
    found = [(f"spec.rewards[{i}]", r) for i, r in enumerate(job.spec.rewards)]
    return found + [(f"spec.evaluation.evaluators[{i}]", e)
                    for i, e in enumerate(job.spec.evaluators())]


def free_port() -> int:
    from rlaif.trainer.distributed import free_port as _free_port

    return _free_port()


def start_reward_servers(job: RLAIFJob, out: Path) -> tuple[list[Child], list[RewardEndpoint]]:
    """Local server processes, ``replicas`` (at least one) per reward and evaluator, each on a
    free port; returns them (in the order of the endpoints' URLs) and the endpoints (an
    evaluator's weight is 0). The reward client spreads each step over a reward's replicas."""
    schema = out / "label-schema.yaml"
    schema.write_text(yaml.safe_dump(job.spec.label_schema.model_dump(by_alias=True)))
    children, endpoints = [], []
    for _, reward in served_models(job):
        assert reward.kind is not None and reward.model is not None  # checked by validation
        urls = []
        for replica in range(max(1, reward.replicas)):
            port = free_port()
            argv = [sys.executable, "-m", "rlaif.cli", "reward", "serve", "--kind", reward.kind,
                    "--model", reward.model, "--host", "127.0.0.1", "--port", str(port),
                    "--max-batch", str(reward.max_batch), "--max-wait-ms",
                    str(reward.max_wait_ms), "--label-schema", str(schema)]
            if reward.judge is not None:  # the API key comes from $RLAIF_JUDGE_API_KEY here
                argv += reward.judge.serve_args()
            suffix = f"-{replica}" if replica else ""
            children.append(spawn(f"reward server {reward.name + suffix!r}", argv,
                                  out / "logs" / f"reward-{reward.name}{suffix}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        endpoints.append(RewardEndpoint(name=reward.name, kind=reward.kind, url=urls[0],
                                        replica_urls=urls[1:], weight=reward.weight))
    return children, endpoints


def wait_ready(servers: list[Child], endpoints: list[RewardEndpoint], timeout_s: float) -> None:
    """Block until every server answers /readyz 200; RunError with the log tail otherwise."""
    deadline = time.monotonic() + timeout_s
    pending = dict(zip([u for e in endpoints for u in e.urls], servers, strict=True))
    while pending:
        for url, child in list(pending.items()):
            if not child.alive():
                raise RunError(f"{child.name} exited with code {child.proc.returncode} before "
                               f"it was ready; log {child.log}:\n{child.log_tail()}",
                               EXIT_REWARDS)
            if _ready(url):
                del pending[url]
        if pending and time.monotonic() > deadline:
            child = next(iter(pending.values()))
            raise RunError(f"{child.name} not ready after {timeout_s:.0f} s "
                           f"(spec.runPolicy.rewardsReadyTimeoutSeconds); log {child.log}:\n"
                           f"{child.log_tail()}", EXIT_REWARDS)
        time.sleep(0.3)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def write_trainer_config(job: RLAIFJob, job_path: Path, out: Path,
                         endpoints: list[RewardEndpoint]) -> Path:
    from rlaif.files import atomic_write_text

    training = {r.name for r in job.spec.rewards}
    config = TrainerConfig(job_name=job.metadata.name, namespace=job.metadata.namespace,
                           spec=job.spec, rewards=[e for e in endpoints if e.name in training],
                           evaluators=[e for e in endpoints if e.name not in training],
                           output_dir=str(out),
                           checkpoint_dir=str(out / "checkpoints"), metrics_port=free_port(),
                           base_dir=str(job_path.resolve().parent))
    path = out / "trainer.yaml"
    atomic_write_text(path, config.dump())
    return path


# --------------------------------------------------------------------------- progress


def follow_metrics(path: Path, after_step: int = 0) -> Iterator[dict]:
    """New complete lines of metrics.jsonl with a step past ``after_step`` (a generator to
    poll). What the file holds at the start is skipped: on a resume the trainer first
    rewrites it (a new file) without the steps past its checkpoint, then appends."""
    offset, inode = _size_and_inode(path)
    while True:
        records = []
        size, current = _size_and_inode(path)
        if current != inode or size < offset:  # rewritten or truncated: read it afresh
            offset, inode = 0, current
        if size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            offset += end
            records = [r for line in data[:end].splitlines() if line.strip()
                       if _new(r := json.loads(line), after_step)]
        yield from records
        yield {}


def _new(record: dict, after_step: int) -> bool:
    """Past ``after_step``, or the base policy's held-out evaluation (step 0) of a fresh run."""
    step = record.get("step", 0)
    return step > after_step or (step == after_step == 0 and record.get("kind") == EVAL_KIND)


def _size_and_inode(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return 0, 0
    return stat.st_size, stat.st_ino


def newest_checkpoint(out: Path) -> tuple[int, Path] | None:
    """(step, path) of the newest complete checkpoint under ``out``: where a rerun resumes."""
    from rlaif.trainer.checkpoint import complete_checkpoints

    found = complete_checkpoints(out / "checkpoints")
    return found[-1] if found else None


def resume_note(out: Path, every_steps: int) -> str:
    """What running the same command again does, for the message of a failed run."""
    found = newest_checkpoint(out)
    if found is None:
        return (f"no checkpoint yet (one is written every {every_steps} steps): running the "
                f"same command again starts from step 0")
    return (f"running the same command again resumes from step {found[0]} "
            f"(checkpoint {found[1]})")


class Progress:
    """A tqdm bar (step/total, reward, ETA) or plain lines."""

    def __init__(self, total: int, plain: bool, start: int = 0) -> None:
        self.plain = plain
        self.bar = None
        if not plain:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, record: dict) -> None:
        if record.get("kind") == EVAL_KIND:
            self.say(heldout_line(record))
            return
        mean = record.get("reward_mean")  # null when no sample of the step could be scored
        reward = "n/a" if mean is None else f"{mean:.3f}"
        if self.bar is not None:
            self.bar.n = record["step"]
            self.bar.set_postfix(reward=reward, kl=f"{record.get('kl', 0):.4f}", refresh=False)
            self.bar.refresh()
        else:
            print(f"step {record['step']}/{record['total_steps']} reward {reward} "
                  f"({record['step_seconds']:.1f} s)", flush=True)

    def say(self, line: str) -> None:
        """A line above the bar (or a plain line)."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def heldout_line(row: dict) -> str:
    """A held-out evaluation's figures for the console."""
    scores = [(k.removeprefix(EVAL_PREFIX), v) for k, v in row.items()
              if k.startswith(EVAL_PREFIX) and "/" not in k.removeprefix(EVAL_PREFIX)]
    line = f"held-out at step {row['step']}: " + ", ".join(
        f"{name} {'n/a' if v is None else f'{v:.3f}'}" for name, v in scores)
    return "\n".join([line] + [f"RewardHacking ({found['rule']} rule): {found['message']}"
                               for found in row.get("hacking", [])])


def supervise(trainer: Child, servers: list[Child], out: Path, total: int, plain: bool,
              start: int = 0) -> int:
    """Follow the trainer (from step ``start`` on a resume) until it exits; Ctrl-C asks it
    to checkpoint and stop."""
    progress = Progress(total, plain, start)
    metrics = follow_metrics(out / "metrics.jsonl", start)
    interrupted = False
    try:
        while trainer.alive():
            try:
                for record in iter(lambda: next(metrics), {}):
                    progress.update(record)
                time.sleep(0.5)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                (out / "STOP").touch()
                print("\nstopping after this step (checkpoint); Ctrl-C again to abort",
                      file=sys.stderr, flush=True)
        for record in iter(lambda: next(metrics), {}):
            progress.update(record)
    finally:
        progress.close()
    code = trainer.proc.returncode
    if code == 0:
        return EXIT_OK
    if code == EXIT_INTERRUPTED or interrupted:
        return EXIT_INTERRUPTED
    dead = [s for s in servers if not s.alive()]
    reason = "".join(f"\n{s.name} exited with code {s.proc.returncode}; log {s.log}:\n"
                     f"{s.log_tail(10)}" for s in dead)
    raise RunError(f"trainer failed with exit code {code}; log {trainer.log}:\n"
                   f"{trainer.log_tail()}{reason}", EXIT_FAILED)


# --------------------------------------------------------------------------- command


def run(job_path: Path, out: Path | None = None, steps: int | None = None,
        ranks: int | None = None, plain: bool = False) -> int:
    job = prepare_job(job_path, steps, ranks)
    out = (out or Path("runs") / job.metadata.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "STOP").unlink(missing_ok=True)
    children: list[Child] = []
    resumed = newest_checkpoint(out)
    try:
        servers, endpoints = start_reward_servers(job, out)
        children += servers
        print(f"starting {len(servers)} reward server(s); logs in {out / 'logs'}", flush=True)
        wait_ready(servers, endpoints, job.spec.run_policy.rewards_ready_timeout_seconds)
        config = write_trainer_config(job, job_path, out, endpoints)
        ranks_n = job.spec.trainer.processes_per_node
        print(f"training {job.metadata.name}: {job.spec.steps} steps on {ranks_n} rank(s); "
              f"output in {out}", flush=True)
        if resumed is not None:
            print(f"resuming from step {resumed[0]} (checkpoint {resumed[1]}); earlier steps "
                  f"stay in {out / 'metrics.jsonl'}", flush=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        env["MASTER_PORT"] = str(free_port())
        trainer = spawn("trainer", [sys.executable, "-m", "rlaif.cli", "train", "--config",
                                    str(config)], out / "logs" / "trainer.log", env)
        children.append(trainer)
        code = supervise(trainer, servers, out, job.spec.steps, plain,
                         resumed[0] if resumed else 0)
    except RunError as exc:
        raise RunError(f"{exc}\n{resume_note(out, job.spec.checkpoint.every_steps)}",
                       exc.code) from None
    finally:
        for child in reversed(children):
            child.stop()
    if code == EXIT_OK:
        print(_closing_note(out), flush=True)
        if where := _where_note(job_path, out):
            print(where, flush=True)
    elif code == EXIT_INTERRUPTED:
        print(f"interrupted; run the same command again to resume from the checkpoint in "
              f"{out / 'checkpoints'}", file=sys.stderr)
    return code


def _closing_note(out: Path) -> str:
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return f"done; output in {out}"
    if summary.get("reward_first") is None or summary.get("reward_last") is None:
        return f"done; output in {out}"
    note = (f"done: reward {summary['reward_first']:.3f} (first steps) -> "
            f"{summary['reward_last']:.3f} (last steps); adapter, metrics.jsonl, summary.json, "
            f"reward_curve.png and samples/ in {out}")
    return note + _heldout_note(summary.get("evaluation") or {})


def _heldout_note(evaluation: dict) -> str:
    """The held-out change of the best metric, paired, with its interval."""
    name = evaluation.get("best_metric", "reward")
    change = (evaluation.get("change") or {}).get(name)
    if not change:
        return ""
    diff = PairedDifference(**change)
    return (f"\nheld-out {name} (steps {evaluation['first_step']} -> "
            f"{evaluation['last_step']}, same prompts and seeds): {diff.describe()}; best at "
            f"step {evaluation.get('best_step')} (exported to best/)")


def _where_note(job_path: Path, out: Path) -> str:
    """Where to look next: the listening report command and TensorBoard's event files."""
    lines = []
    if (out / "eval").is_dir():
        lines.append(f"held-out samples in {out / 'eval'}; listening report (base vs trained): "
                     f"rlaif eval {job_path} --checkpoint {out} --out {out / 'report'}")
    if (out / TENSORBOARD_DIR).is_dir():
        lines.append(f"TensorBoard event files in {out / TENSORBOARD_DIR}: "
                     f"tensorboard --logdir {out / TENSORBOARD_DIR}")
    return "\n".join(lines)


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (a service manager, ``timeout``, ``kill``) stops the run as Ctrl-C does:
    checkpoint, then stop every child; left unhandled it would orphan the reward servers
    and the trainer, which run in their own process groups."""
    raise KeyboardInterrupt


def run_command(args: argparse.Namespace) -> int:
    """``rlaif run JOB.yaml [--out DIR] [--steps N] [--ranks N] [--no-progress]``."""
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return run(Path(args.job), Path(args.out) if args.out else None, args.steps,
                   args.ranks, args.no_progress)
    except RunError as exc:
        print(f"rlaif run: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("rlaif run: aborted; every child process was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
