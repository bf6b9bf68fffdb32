"""DataLoader factory: DDP-aware samplers, per-worker seeding, pinned memory on CUDA.

Each worker opens its own decoder per item (decord/PyAV handles are not shared across processes).
Workers persist across epochs: starting one imports torch, albumentations and decord again (seconds
per worker under forkserver, which the loader uses once CUDA is initialised). ``dataset.set_epoch``
still reaches them because ``VideoClipDataset`` keeps its epoch in shared memory.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from actionrec.data.dataset import DecodeTable, TooManyBadVideos, collate_clips
from actionrec.errors import UserError


class LoaderStalled(UserError, RuntimeError):
    """A worker hung past the timeout or died; the message names the file it was decoding."""


class GuardedDataLoader(DataLoader):
    """DataLoader whose worker timeouts and crashes name the video being decoded.

    PyTorch reports a hung worker as "DataLoader timed out after N seconds" and a crashed one
    (a decoder segfault) as "worker exited unexpectedly", with no hint of the file. Datasets with
    a ``decode_table`` attribute get a shared ``DecodeTable`` that workers fill in, so both become
    a ``LoaderStalled`` naming the file(s) in flight. Decoding in the main process
    (``num_workers=0``) has no timeout: a hang there cannot be interrupted from Python.
    """

    def __init__(self, dataset, *args, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        if self.num_workers > 0 and hasattr(dataset, "decode_table"):
            dataset.decode_table = DecodeTable(self.num_workers)

    def __iter__(self):
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except TooManyBadVideos as e:
                # Raised in a worker and re-created here with the worker's traceback as its
                # message; keep the original message only.
                raise TooManyBadVideos(str(e).rsplit("TooManyBadVideos: ", 1)[-1].rstrip()) from None
            except RuntimeError as e:
                text = str(e)
                if "timed out" not in text and "exited unexpectedly" not in text and "killed by signal" not in text:
                    raise
                # Private, but the only way to tell which worker died (stable across torch 1.x-2.x).
                dead = [i for i, w in enumerate(getattr(it, "_workers", [])) if not w.is_alive()]
                msg = self._stall_message(text, dead)
                # Stop the workers now: the exception's traceback keeps the iterator alive, and
                # its dead worker stays registered with torch's SIGCHLD handler, which would raise
                # again at the next child process exit anywhere in this process.
                # (A hung worker costs the shutdown its 5 s join timeout; terminating it here
                # first would race torch's SIGCHLD handler, which raises for registered workers.)
                shutdown = getattr(it, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
                raise LoaderStalled(msg) from None
            yield batch

    def _stall_message(self, error: str, dead: list[int]) -> str:
        table = getattr(self.dataset, "decode_table", None)
        busy = table.busy() if table is not None else []
        if dead and "timed out" not in error:
            busy = [b for b in busy if b[0] in dead]
        what = (f"no batch within data.loader_timeout={self.timeout:g} s" if "timed out" in error
                else f"a data loader worker died ({error.strip().splitlines()[0]})")
        if not busy:
            return f"{what}; no worker was decoding a video at that moment"
        files = "; ".join(f"worker {w}: {p} (for {s:.0f} s)" for w, p, s in sorted(busy, key=lambda b: -b[2]))
        return (f"{what}. Decoding in progress: {files}. Check the file with data_prep/check_videos.py "
                "and move it out of the split lists (its --quarantine option does both)")


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r takes indices r, r + world, ... with NO padding.

    ``DistributedSampler`` pads the dataset to a multiple of the world size by repeating samples,
    which would count some videos twice in the metrics; here every index is visited exactly once.
    """

    def __init__(self, dataset_len: int, rank: int, world_size: int):
        self.indices = list(range(rank, dataset_len, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can skip the first items of one epoch (mid-epoch resume).

    The order is the usual (seed, epoch) permutation; ``set_skip(n)`` drops its first n items on
    the next iteration only, so a resumed epoch sees exactly the batches it had not seen yet.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def set_skip(self, num_items: int) -> None:
        self.skip = num_items

    def __iter__(self):
        items = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(items)

    def __len__(self) -> int:
        return super().__len__() - self.skip


BALANCE_POWER = {"sqrt": 0.5, "inverse": 1.0}  # data.balance -> p in weight = count(class)^-p


class BalancedDistributedSampler(Sampler[int]):
    """Class-aware training sampler: draws with replacement, rare classes more often; DDP-aware.

    Each epoch draws ``world_size * ceil(N / world_size)`` indices with replacement, sample weight
    ``count(class) ** -power`` (power 1: every class equally often; 0.5: class share proportional to
    sqrt(count)), from a generator seeded by (seed, epoch). Every rank draws the same list and takes
    its strided shard, so shards have equal length (as with ``DistributedSampler``) and the epoch is
    reproducible. ``set_skip(n)`` drops the first n items of this rank's shard on the next
    iteration only (mid-epoch resume), as ``ResumableDistributedSampler`` does.

    Args:
        labels: class index of every dataset item.
        power: exponent p of the inverse class count (``BALANCE_POWER[data.balance]``).
        num_replicas, rank: world size and this process's rank.
        seed: base seed; ``set_epoch`` adds the epoch.
    """

    def __init__(self, labels: Sequence[int], *, power: float, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        if not len(labels):
            raise ValueError("balanced sampling needs at least one labelled item")
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        counts = torch.bincount(labels_t).double()
        self.weights = counts[labels_t] ** -power
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.num_samples = math.ceil(len(labels_t) / num_replicas)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_skip(self, num_items: int) -> None:
        self.skip = num_items

    def epoch_indices(self) -> list[int]:
        """The whole epoch's draw (all ranks' items, before sharding)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples * self.num_replicas, replacement=True, generator=g)
        return drawn.tolist()

    def __iter__(self):
        items = self.epoch_indices()[self.rank :: self.num_replicas][self.skip :]
        self.skip = 0
        return iter(items)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def _seed_worker(worker_id: int) -> None:
    # Items draw from their own (seed, epoch, index) generators; this only pins stray global RNG use.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(
    dataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    pin_memory: bool = False,
    timeout: float = 0.0,
    drop_last: bool | None = None,
    labels: Sequence[int] | None = None,
    balance: str = "none",
) -> DataLoader:
    """Build the train or eval DataLoader.

    Args:
        dataset: a ``VideoClipDataset``.
        batch_size: clips per process.
        train: shuffle (DistributedSampler when world_size > 1) and drop the last partial batch.
        num_workers: decoding processes.
        rank, world_size: this process's place in the DDP group.
        seed: shuffling seed (the sampler adds the epoch through ``set_epoch``).
        pin_memory: pin host memory (use when training on CUDA).
        timeout: seconds to wait for a batch from a worker (0: forever); guards against a hung decoder.
        drop_last: defaults to ``train``.
        labels: class of every item; needed when ``balance`` is not "none".
        balance: "none" (each item once per epoch, shuffled), "sqrt" or "inverse": training draws
            with ``BalancedDistributedSampler`` (ignored for evaluation, which visits every item once).
    """
    drop_last = train if drop_last is None else drop_last
    if train and balance != "none":
        if labels is None:
            raise ValueError(f"balance={balance!r} needs the training labels")
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for a dataset of {len(dataset)} items")
        sampler = BalancedDistributedSampler(labels, power=BALANCE_POWER[balance], num_replicas=world_size, rank=rank,
                                             seed=seed)
    elif train:
        sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    return GuardedDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_clips,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=_seed_worker,
        # Each new iterator draws a worker base seed; from its own generator rather than the global
        # RNG, so a mid-epoch resume (global RNG restored from the checkpoint) sees the same dropout.
        generator=torch.Generator().manual_seed(seed),
        timeout=timeout if num_workers > 0 else 0,
        prefetch_factor=2 if num_workers > 0 else None,
        multiprocessing_context="forkserver" if num_workers > 0 and torch.cuda.is_initialized() else None,
        persistent_workers=num_workers > 0,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Advance shuffling and augmentation randomness to ``epoch``."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
