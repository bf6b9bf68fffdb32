"""Process-group setup for ``torchrun`` and small collective helpers.

Rank logic lives here and is returned as values (``DistInfo``); nothing writes into args.
Launch: ``torchrun --nproc_per_node=N tools/train.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = ""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA exists else cpu; 'cuda' -> cuda:<local_rank>.

    Raises:
        ValueError: a CUDA device is requested that this machine does not have.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    dev = torch.device(spec)
    check_device(dev)
    return dev


def available_devices() -> list[str]:
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def check_device(dev: torch.device | str) -> None:
    """Fail before training when ``dev`` does not exist, listing the devices that do."""
    dev = torch.device(dev)
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        idx = dev.index if dev.index is not None else 0
        if idx < n:
            return
    raise ValueError(f"device '{dev}' does not exist on this machine; available: {', '.join(available_devices())}")


def init_distributed(backend: str = "auto") -> DistInfo:
    """Initialise the default process group when launched by torchrun; no-op for one process.

    Args:
        backend: 'auto' (nccl with CUDA, gloo on CPU), 'nccl' or 'gloo'.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, backend=backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj) -> list:
    """All ranks' ``obj`` as a list (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
