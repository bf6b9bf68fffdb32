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


def _saver_run(tmp_path, metrics, **kw):
    saver = ck.CheckpointSaver(tmp_path, **kw)
    tops = [saver.update_best({"epoch": e}, m, e) for e, m in enumerate(metrics, 1)]
    return saver, tops


def test_saver_ranks_higher_or_lower_as_told_and_nan_last(tmp_path):
    saver, tops = _saver_run(tmp_path / "acc", [0.5, 0.7, 0.6, float("nan")], keep_best=2)
    assert tops == [True, True, False, False]
    assert [e["epoch"] for e in saver.best] == [2, 3]
    saver, tops = _saver_run(tmp_path / "loss", [1.0, 0.7, float("nan"), 0.8, 0.6], keep_best=2, metric="loss",
                             higher_is_better=False)
    assert tops == [True, True, False, False, True]
    assert [(e["epoch"], e["name"]) for e in saver.best] == [(5, "loss"), (2, "loss")]
    assert torch.load(tmp_path / "loss" / "best.pt", weights_only=True) == {"epoch": 5}
    assert sorted(p.name for p in (tmp_path / "loss").glob("best-epoch*.pt")) == ["best-epoch002.pt", "best-epoch005.pt"]


def test_saver_ranking_survives_a_restart_unless_the_metric_changed(tmp_path):
    _saver_run(tmp_path, [0.2, 0.9], metric="mean_class_acc")
    again = ck.CheckpointSaver(tmp_path, metric="mean_class_acc")
    assert again.best == [{"epoch": 2, "metric": 0.9, "name": "mean_class_acc"}]
    assert not again.update_best({"epoch": 3}, 0.5, 3)
    other = ck.CheckpointSaver(tmp_path, metric="loss", higher_is_better=False)
    assert other.best == []  # ranked by another metric: a new ranking starts
    assert other.update_best({"epoch": 4}, 2.0, 4)
    (tmp_path / "best.json").write_text('[{"epoch": 1, "metric": 0.4}]')  # written before entries named their metric
    assert ck.CheckpointSaver(tmp_path).best == [{"epoch": 1, "metric": 0.4}]
