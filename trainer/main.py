"""``rlaif train --config FILE``: the trainer entry point, in pods and under ``rlaif run``.

Run without a launcher it decides the topology from the config (spec.trainer.nodes x
processesPerNode) and the environment (MASTER_ADDR, MASTER_PORT, NODE_RANK):

- 1 rank: trains in this process (rank 0 of 1);
- 1 node, M ranks: ``deepspeed --num_gpus M --master_port P --module rlaif.trainer.main``;
- N nodes: ``torchrun`` with a static rendezvous at MASTER_ADDR:MASTER_PORT (no ssh, which
  pods do not have), one launcher per pod with its NODE_RANK.

A process started by a launcher (LOCAL_RANK set) is one rank and trains. The launcher runs
as a child of this process, which stays the pod's first process: SIGTERM (pod deletion,
eviction, preemption, suspend) becomes the STOP file every rank on every node reads after its
step, so the gang checkpoints together within the grace period instead of being killed by
the launcher (see ``supervise``).
Exit codes: 0 done, 1 failed, 2 invalid config (the operator does not retry), 130 stopped
on request after a checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from pydantic import ValidationError

from rlaif import constants as c
from rlaif.config import TrainerConfig

log = logging.getLogger("rlaif.trainer")

ALGORITHMS = {"grpo": "rlaif.trainer.grpo_algorithm", "dlpo": "rlaif.trainer.dlpo"}


class ConfigError(ValueError):
    """A trainer config that cannot be read; the message names the file and field."""


def load_config(path: Path) -> TrainerConfig:
    from rlaif.api.validation import pydantic_errors

    try:
        return TrainerConfig.load(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read trainer config: {exc.strerror}") from None
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{path}: {e}" for e in pydantic_errors(exc))) from None


def launcher_command(config_path: Path, nodes: int, per_node: int, env: dict[str, str]
                     ) -> list[str] | None:
    """The launcher argv for this topology, or None to train in this process."""
    if nodes * per_node == 1:
        return None
    port = env.get("MASTER_PORT", str(c.RENDEZVOUS_PORT))
    target = ["--config", str(config_path)]
    if nodes == 1:
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(per_node),
                "--master_addr", env.get("MASTER_ADDR", "127.0.0.1"), "--master_port", port,
                "--no_local_rank", "--module", "rlaif.trainer.main", *target]
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
            f"--nproc-per-node={per_node}", f"--node-rank={env.get('NODE_RANK', '0')}",
            f"--master-addr={env['MASTER_ADDR']}", f"--master-port={port}",
            "-m", "rlaif.trainer.main", *target]


def supervise(argv: list[str], stop_file: Path) -> int:
    """Run the launcher and turn SIGTERM/SIGINT into ``stop_file``.

    Kubernetes signals only the container's first process. The DeepSpeed launcher kills its
    ranks when signalled and torchrun SIGKILLs them 30 s later, both too soon for a large
    checkpoint; a signal in one pod of a multi-node gang would not reach the other pods at
    all. The STOP file is on the checkpoint volume every node shares: each rank finishes its
    step, they agree to stop, checkpoint together and exit (EXIT_STOPPED), and the next gang
    resumes at the following step.
    """
    from rlaif.trainer.loop import EXIT_STOPPED

    signalled: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %d: asking every rank to checkpoint and stop", signum)
        signalled.append(signum)
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()

    child = subprocess.Popen(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    code = child.wait()
    # A stop another node asked for ends this node's ranks too: report it as a stop.
    return EXIT_STOPPED if code != 0 and (signalled or stop_file.exists()) else code


def configure_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")


def set_cpu_threads() -> None:
    """Share the cores between the ranks of this machine instead of oversubscribing them."""
    import torch

    if not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def run_rank(config: TrainerConfig, *, overlap: bool = True,
             config_path: Path | None = None) -> int:
    """Train as one rank of the job (joining the process group the launcher set up)."""
    from rlaif.reward_client import RewardClient, RewardUnavailable
    from rlaif.trainer.distributed import init_distributed
    from rlaif.trainer.loop import (
        EXIT_FAILED,
        STOP_FILE,
        StopRequest,
        TrainingLoop,
        seed_everything,
    )

    set_cpu_threads()
    ctx = init_distributed()
    trainer = config.spec.trainer
    if ctx.world_size != trainer.nodes * trainer.processes_per_node:
        raise ConfigError(f"the launcher started {ctx.world_size} rank(s) but spec.trainer asks "
                          f"for nodes {trainer.nodes} x processesPerNode "
                          f"{trainer.processes_per_node} (stale RANK/WORLD_SIZE/LOCAL_RANK in "
                          f"the environment?)")
    seed_everything(config.spec.seed)  # identical initial weights (LoRA) on every rank
    module = importlib.import_module(ALGORITHMS[config.spec.algorithm])
    algorithm = module.build_algorithm(config, ctx.rank, ctx.world_size)
    seed_everything(config.spec.seed + 7919 * ctx.rank)  # different samples per rank
    stop = StopRequest(Path(config.output_dir) / STOP_FILE)
    stop.install_signal_handlers()
    client = RewardClient(config.rewards)
    try:
        return TrainingLoop(config, ctx, algorithm, client, overlap=overlap, stop=stop,
                            config_path=config_path).run()
    except RewardUnavailable as exc:
        log.error("training failed: %s", exc)
        return EXIT_FAILED
    finally:
        client.close()


def train_command(args: argparse.Namespace) -> int:
    """``rlaif train --config FILE``."""
    configure_logging()
    path = Path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return c.EXIT_INVALID_CONFIG
    if "LOCAL_RANK" not in os.environ:  # not started by a launcher: pick one
        from rlaif.trainer.loop import STOP_FILE

        # A STOP file left by the stopped gang this one resumes would stop it at once.
        stop_file = Path(config.output_dir) / STOP_FILE
        stop_file.unlink(missing_ok=True)
        trainer = config.spec.trainer
        argv = launcher_command(path.resolve(), trainer.nodes, trainer.processes_per_node,
                                dict(os.environ))
        if argv is not None:
            log.info("launching %d x %d ranks: %s", trainer.nodes, trainer.processes_per_node,
                     " ".join(argv))
            return supervise(argv, stop_file)
    try:
        return run_rank(config, config_path=path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return c.EXIT_INVALID_CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlaif.trainer.main")
    parser.add_argument("--config", required=True)
    return train_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
