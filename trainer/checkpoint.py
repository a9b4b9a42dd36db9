"""Checkpoints that survive a crash at any instant.

Layout under the checkpoint directory::

    step-00000050/          a complete checkpoint (renamed into place last)
        meta.json           step, data position, time, world size
        rng-rank0.pt ...    Python, NumPy and torch RNG states of each rank
        engine/ ...         the algorithm's state (DeepSpeed: LoRA weights, optimizer shards)
    .tmp-step-00000060/     being written; ignored and removed on restart

Every rank writes its part into the temp folder; rank 0 then writes meta.json, fsyncs the
tree and renames it, so a checkpoint either exists whole or not at all. Multi-node runs need
the checkpoint directory on a volume all trainer pods share.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlaif.constants import CHECKPOINT_STEP_DIR
from rlaif.files import fsync_dir, fsync_tree
from rlaif.trainer.algorithm import AlgorithmState
from rlaif.trainer.distributed import DistContext, all_gather_objects, barrier

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
META = "meta.json"


def step_dir_name(step: int) -> str:
    return CHECKPOINT_STEP_DIR.format(step=step)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = STEP_DIR.match(path.name)
        if m and (path / META).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


class Checkpoints:
    """Writes, prunes and finds checkpoints (collective calls: every rank calls them)."""

    def __init__(self, root: Path, keep: int, ctx: DistContext) -> None:
        self.root, self.keep, self.ctx = root, keep, ctx
        if ctx.is_main:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-step-*"):
                log.info("removing half-written checkpoint %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        barrier()

    def latest(self) -> tuple[int, Path] | None:
        found = complete_checkpoints(self.root)
        return found[-1] if found else None

    def save(self, step: int, algorithm: AlgorithmState, meta: dict[str, Any]) -> Path:
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{final.name}"
        if self.ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        algorithm.save_state(tmp)
        rng_file = tmp / f"rng-rank{self.ctx.rank}.pt"
        torch.save(rng_state(), rng_file)
        written = all_gather_objects(rng_file.name)
        if self.ctx.is_main:
            missing = [name for name in written if not (tmp / name).is_file()]
            if missing:  # never commit a checkpoint some rank's part is missing from
                raise RuntimeError(f"checkpoint {final.name}: {', '.join(missing)} missing "
                                   f"from {tmp}; is {self.root} shared by every rank?")
            record = {"step": step, "time": time.time(), "world_size": self.ctx.world_size,
                      **meta}
            (tmp / META).write_text(json.dumps(record, indent=1))
            fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)  # a re-run of the same step
            tmp.rename(final)
            fsync_dir(self.root)
            self._prune()
        barrier()
        return final

    def load(self, path: Path, algorithm: AlgorithmState) -> dict[str, Any]:
        """Restore algorithm state and this rank's RNG; returns meta.json."""
        meta = json.loads((path / META).read_text())
        algorithm.load_state(path)
        rng_file = path / f"rng-rank{self.ctx.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            log.warning("%s has no RNG state for rank %d (world size changed from %s); "
                        "sampling continues from a fresh seed", path, self.ctx.rank,
                        meta.get("world_size"))
        return meta

    def _prune(self) -> None:
        for _, old in complete_checkpoints(self.root)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

