"""Class-balanced training sampler: target class distribution, DDP shards, (seed, epoch) determinism, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actionrec.data.loader import BalancedDistributedSampler, ResumableDistributedSampler, build_loader

# Long-tailed: 400, 100, 25 and 4 items.
LABELS = [0] * 400 + [1] * 100 + [2] * 25 + [3] * 4
COUNTS = np.bincount(LABELS)


def class_shares(sampler, epochs: int) -> tuple[np.ndarray, int]:
    drawn = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn += [LABELS[i] for i in sampler]
    return np.bincount(drawn, minlength=len(COUNTS)), len(drawn)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_drawn_class_frequencies_follow_the_target(power):
    # class share is proportional to count * count^-power = count^(1 - power)
    target = COUNTS ** (1 - power) / (COUNTS ** (1 - power)).sum()
    counts, n = class_shares(BalancedDistributedSampler(LABELS, power=power, seed=3), epochs=40)
    expected = target * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # 3 degrees of freedom: p = 0.001
    assert n == 40 * len(LABELS)


def test_ranks_take_equal_disjoint_strided_slices_of_one_draw():
    world = 3
    samplers = [BalancedDistributedSampler(LABELS, power=1.0, num_replicas=world, rank=r, seed=7) for r in range(world)]
    for s in samplers:
        s.set_epoch(5)
    shards = [list(s) for s in samplers]
    drawn = samplers[0].epoch_indices()
    assert len(drawn) == world * -(-len(LABELS) // world)
    assert all(len(sh) == len(s) == len(drawn) // world for sh, s in zip(shards, samplers))
    for r, sh in enumerate(shards):
        assert sh == drawn[r::world]  # every rank drew the same list and kept its own positions


def test_same_seed_and_epoch_same_list_other_epoch_or_seed_differs():
    a = BalancedDistributedSampler(LABELS, power=0.5, seed=1)
    b = BalancedDistributedSampler(LABELS, power=0.5, seed=1)
    a.set_epoch(2), b.set_epoch(2)
    first = list(a)
    assert first == list(b) == list(a)  # also stable across repeated iteration
    b.set_epoch(3)
    assert list(b) != first
    c = BalancedDistributedSampler(LABELS, power=0.5, seed=2)
    c.set_epoch(2)
    assert list(c) != first


def test_set_skip_resumes_the_epoch_exactly_once():
    s = BalancedDistributedSampler(LABELS, power=1.0, num_replicas=2, rank=1, seed=0)
    s.set_epoch(4)
    full = list(s)
    s.set_skip(10)
    assert len(s) == len(full) - 10
    assert list(s) == full[10:]
    assert list(s) == full  # the skip applies to one iteration only


def test_build_loader_picks_the_sampler_by_balance():
    ds = torch.utils.data.TensorDataset(torch.arange(len(LABELS)))
    assert isinstance(build_loader(ds, batch_size=4, train=True, num_workers=0).sampler, ResumableDistributedSampler)
    loader = build_loader(ds, batch_size=4, train=True, num_workers=0, labels=LABELS, balance="inverse", seed=3)
    assert isinstance(loader.sampler, BalancedDistributedSampler) and len(loader) == len(LABELS) // 4
    ev = build_loader(ds, batch_size=4, train=False, num_workers=0, labels=LABELS, balance="inverse")
    assert list(ev.sampler) == list(range(len(LABELS)))  # evaluation visits every item once
    with pytest.raises(ValueError, match="needs the training labels"):
        build_loader(ds, batch_size=4, train=True, num_workers=0, balance="sqrt")
    with pytest.raises(ValueError, match="3 labels"):
        build_loader(ds, batch_size=4, train=True, num_workers=0, labels=[0, 1, 2], balance="sqrt")
