"""RNG state in checkpoints: the CUDA part restores on a machine with another number of GPUs."""

from __future__ import annotations

import pytest
import torch

from actionrec.engine import checkpoint as ck


@pytest.mark.parametrize("saved, visible, restored", [
    (0, 0, []),  # CPU run resumed on CPU
    (0, 2, []),  # CPU checkpoint on a GPU machine: GPUs keep their seeded state
    (2, 2, [0, 1]),
    (8, 2, [0, 1]),  # fewer GPUs visible than when saved: the missing ones are dropped
    (4, 1, [0]),
    (2, 0, []),  # a GPU checkpoint resumed on a CPU-only machine
    (1, 4, [0]),  # more GPUs now: the extra ones keep their state
])
def test_cuda_rng_restore_plan(saved, visible, restored):
    assert ck.cuda_rng_restore_plan(saved, visible) == restored


def _fake_cuda(monkeypatch, visible: int) -> list:
    """``visible`` fake GPUs whose ``set_rng_state`` records calls and fails like torch for a missing device."""
    calls = []

    def set_rng_state(state, device="cuda"):
        if int(device) >= visible:
            raise IndexError("list index out of range")  # what torch raises for a device that is not there
        calls.append((int(device), int(state[0])))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)  # what set_rng_state_all calls
    return calls


@pytest.mark.parametrize("saved, visible", [(4, 2), (2, 1), (2, 2), (1, 3), (3, 0)])
def test_set_rng_state_with_other_gpu_counts(monkeypatch, saved, visible):
    state = ck.rng_state()
    state["cuda"] = [torch.tensor([10 + i], dtype=torch.uint8) for i in range(saved)]
    calls = _fake_cuda(monkeypatch, visible)
    ck.set_rng_state(state)
    assert calls == [(i, 10 + i) for i in range(min(saved, visible))]


def test_cpu_rng_round_trip():
    state = ck.rng_state()
    a = torch.rand(3)
    ck.set_rng_state(state)
    torch.testing.assert_close(torch.rand(3), a, rtol=0, atol=0)
