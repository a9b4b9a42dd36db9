"""Process-group set-up and the few collectives the loop needs.

The same code runs as one plain process (no launcher: rank 0 of 1) or as a rank started by
the DeepSpeed launcher / torchrun, which set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT. gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on this machine right now (for rendezvous and local servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed() -> DistContext:
    """Join (or create, when run alone) the default process group; idempotent."""
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        skip_shared_memory_op()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _device() -> torch.device:
    """Where collective buffers must live: the GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def skip_shared_memory_op() -> None:
    """Do not JIT-build DeepSpeed's CPU shared-memory all-reduce op.

    Only ``inference_all_reduce`` uses it (training collectives go through gloo), yet
    DeepSpeed compiles it in every process that joins a group: about a minute on 2 cores,
    and again whenever another process on the machine rebuilt the shared cache in
    ~/.cache/torch_extensions with different flags.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def all_any(flag: bool) -> bool:
    """True on every rank when any rank passes True (to agree on stopping or skipping)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order: a sync point that carries data."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    """Wait for every rank, as an all-reduce: it cannot complete before each rank joins."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(torch.zeros(1, device=_device()))
