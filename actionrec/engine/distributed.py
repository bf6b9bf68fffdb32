"""Process-group setup for ``torchrun`` and small collective helpers.

Rank logic lives here and is returned as values (``DistInfo``); nothing writes into args.
Launch: ``torchrun --nproc_per_node=N tools/train.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK.

Device specs (``train.device``, ``model.placement.cnn`` / ``.lstm``) are 'auto', 'cpu', 'cuda',
'cuda:N' or 'cuda:{EXPR}', where EXPR is integer arithmetic over ``local_rank`` (``+ - * // %``,
parentheses, integer literals; nothing else is evaluated). Data parallel plus model parallel with
two GPUs per process: ``model.placement.cnn='cuda:{2*local_rank}'`` and
``model.placement.lstm='cuda:{2*local_rank+1}'``.
"""

from __future__ import annotations

import ast
import operator
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from actionrec.errors import UsageError


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


_RANK_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
             ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _rank_expr(expr: str, local_rank: int, spec: str) -> int:
    # A tiny AST walker instead of eval(): a config string must never be able to run code.
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id == "local_rank":
            return local_rank
        if isinstance(node, ast.BinOp) and type(node.op) in _RANK_OPS:
            return _RANK_OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError
    try:
        return ev(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):  # nesting too deep
        raise UsageError(
            f"device '{spec}': cannot evaluate '{{{expr}}}'; placeholders allow integer arithmetic "
            "(+ - * // %) over local_rank, e.g. 'cuda:{2*local_rank+1}'"
        ) from None


def expand_device_spec(spec: str, local_rank: int = 0) -> str:
    """Replace each ``{EXPR}`` in ``spec`` by its value for this process's ``local_rank``.

    Example: ``expand_device_spec('cuda:{2*local_rank+1}', 3) == 'cuda:7'``.

    Raises:
        UsageError: EXPR is anything but integer arithmetic over ``local_rank``.
    """
    return _PLACEHOLDER.sub(lambda m: str(_rank_expr(m.group(1), local_rank, spec)), spec)


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA exists else cpu; 'cuda' -> cuda:<local_rank>.

    ``{EXPR}`` placeholders are expanded first (``expand_device_spec``).

    Raises:
        UsageError: the spec is malformed or names a device this machine does not have.
    """
    spec = expand_device_spec(spec, local_rank)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"device '{spec}' is not a device name; available: {', '.join(available_devices())}") from None
    check_device(dev)
    return dev


def resolve_placement(
    device: str, cnn: str = "", lstm: str = "", local_rank: int = 0
) -> tuple[torch.device, torch.device]:
    """(cnn_device, head_device) of this process; an empty placement means ``device``.

    Args:
        device: the training device spec (``train.device``).
        cnn, lstm: model-parallel placement specs (``model.placement``), may hold placeholders.
        local_rank: this process's index on its node.

    Raises:
        UsageError: a spec is malformed or names a device that does not exist (listing those that do).
    """
    return resolve_device(cnn or device, local_rank), resolve_device(lstm or device, local_rank)


def rank_seed(seed: int, rank: int, world_size: int, step: int = 0) -> int:
    """Global RNG seed of ``rank`` at optimizer ``step``: distinct per rank, and per resume point.

    A checkpoint stores rank 0's RNG state only, so a resumed DDP run re-seeds every rank from
    (seed, rank, step); step 0 gives the seed of a fresh start.
    """
    return seed + rank + world_size * step


def seed_process(seed: int, rank: int, world_size: int, *, deterministic: bool = False) -> None:
    """Seed this rank's global RNG (``rank_seed`` at step 0).

    ``deterministic``: deterministic algorithms (warnings where there is none) and no cuDNN autotuning.
    """
    torch.manual_seed(rank_seed(seed, rank, world_size))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def set_cpu_threads(requested: int, *, num_workers: int) -> int:
    """Set torch's CPU threads by ``threads.cpu_threads``, the ranks on this node (``LOCAL_WORLD_SIZE``)
    sharing the cores; returns the count."""
    from actionrec.engine.threads import cpu_threads

    torch.set_num_threads(cpu_threads(requested, num_workers=num_workers,
                                      procs_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return torch.get_num_threads()


def available_devices() -> list[str]:
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def check_device(dev: torch.device | str) -> None:
    """Fail before training when ``dev`` does not exist, listing the devices that do.

    Raises:
        UsageError: naming the device and listing the available ones.
    """
    dev = torch.device(dev)
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        idx = dev.index if dev.index is not None else 0
        if idx < n:
            return
    raise UsageError(f"device '{dev}' does not exist on this machine; available: {', '.join(available_devices())}")


def init_distributed(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Initialise the default process group when launched by torchrun; no-op for one process.

    Args:
        backend: 'auto', 'nccl' or 'gloo'. 'auto' is nccl when ``device`` is a CUDA device, else
            gloo (a ``train.device=cpu`` run on a GPU machine must not get nccl, which has no CPU
            collectives).
        device: the device spec the process will compute on (its CNN's); 'auto' means CUDA if present.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        backend = "nccl" if on_cuda else "gloo"
    if backend == "nccl" and local_rank < torch.cuda.device_count():
        # Default device for NCCL collectives; a placed model moves it with bind_devices. A
        # local rank without a GPU is reported by resolve_device with the list of devices.
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, backend=backend)


def bind_devices(devices: list[torch.device]) -> None:
    """Make ``devices[0]`` this process's current CUDA device; under DDP, fail if ranks share a GPU.

    Two processes on one GPU is nearly always a placement without ``{local_rank}`` (every rank
    asking for cuda:0 and cuda:1); NCCL would fail later with a less helpful message.

    Raises:
        UsageError: naming the ranks and the shared device.
    """
    if devices[0].type == "cuda":
        torch.cuda.set_device(devices[0])
    mine = sorted({str(d) for d in devices if d.type == "cuda"})
    groups = gather_objects((socket.gethostname(), mine))
    owner: dict[tuple[str, str], int] = {}
    for rank, (host, devs) in enumerate(groups):
        for d in devs:
            if (host, d) in owner:
                raise UsageError(
                    f"ranks {owner[host, d]} and {rank} both use {d} on {host}; give each local rank its "
                    "own devices, e.g. model.placement.cnn='cuda:{2*local_rank}' "
                    "model.placement.lstm='cuda:{2*local_rank+1}'"
                )
            owner[host, d] = rank


def wrap_ddp(model: nn.Module, *, sync_bn: bool = False, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel over a single- or multi-device (model-parallel) module.

    A module on one GPU gets ``device_ids=[that GPU]``; a CPU module or one spread over several
    GPUs gets ``device_ids=None``, and its own ``forward`` moves activations between devices.

    Args:
        model: the placed model (parameters already on their devices).
        sync_bn: convert BatchNorm layers to SyncBatchNorm (statistics over the global batch).
        find_unused_parameters: some trainable parameters sit out some steps (``model.heads`` > 1:
            the heads not training); DDP then finds them in each step's graph.

    Raises:
        UsageError: parameters on different device types (DDP needs one), or ``sync_bn`` off CUDA.
    """
    devices = {p.device for p in model.parameters()}
    types = {d.type for d in devices}
    if len(types) != 1:
        raise UsageError(
            f"DDP needs the whole model on one device type, got {sorted(map(str, devices))}; "
            "put model.placement.cnn and model.placement.lstm on the same kind of device"
        )
    if sync_bn:
        if types != {"cuda"}:
            raise UsageError("train.sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    single_gpu = len(devices) == 1 and types == {"cuda"}
    return nn.parallel.DistributedDataParallel(model, device_ids=[next(iter(devices))] if single_gpu else None,
                                               find_unused_parameters=find_unused_parameters)


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
