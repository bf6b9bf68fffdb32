"""The training loop's decisions: mixed precision per device, gradient accumulation, the bad-video limit."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn

from actionrec.data.dataset import DecodeFailures, TooManyBadVideos
from actionrec.engine import loop
from actionrec.engine.loop import accumulation_group, choose_amp, resolve_amp, setup_amp, train_one_epoch
from actionrec.engine.optim import create_scheduler, updates_per_epoch

# ------------------------------------------------------------------ mixed precision

# (mode, device type, compute capability, native bf16) -> precision used
AMP_TABLE = [
    ("auto", "cuda", (9, 0), False, "bf16"),  # H100
    ("auto", "cuda", (8, 6), False, "bf16"),  # RTX 30xx / A10
    ("auto", "cuda", (8, 0), False, "bf16"),  # A100
    ("auto", "cuda", (7, 5), False, "fp16"),  # T4: bf16 only emulated
    ("auto", "cuda", (7, 0), False, "fp16"),  # V100: bf16 only emulated
    ("auto", "cuda", (6, 0), False, "fp16"),  # P100
    ("auto", "cuda", (9, 0), True, "bf16"),  # ROCm (native bf16 reported directly)
    ("auto", "cuda", (7, 0), True, "bf16"),
    ("auto", "cpu", None, True, "bf16"),  # oneDNN with native bf16 (AVX512-BF16 / AMX)
    ("auto", "cpu", None, False, "none"),  # AVX2-only CPUs: emulated bf16 was 7-27x slower
    ("auto", "mps", None, False, "none"),
    ("none", "cuda", (9, 0), False, "none"),
    ("bf16", "cuda", (7, 0), False, "bf16"),  # explicit wins (setup_amp warns)
    ("fp16", "cuda", (9, 0), False, "fp16"),
    ("bf16", "cpu", None, False, "bf16"),
    ("none", "cpu", None, True, "none"),
]


@pytest.mark.parametrize("mode, device_type, capability, native, expected", AMP_TABLE)
def test_amp_choice_by_table(mode, device_type, capability, native, expected):
    assert choose_amp(mode, device_type=device_type, capability=capability, native_bf16=native) == expected


def test_amp_fp16_off_cuda_and_unknown_modes_are_refused():
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        choose_amp("fp16", device_type="cpu")
    with pytest.raises(ValueError, match="train.amp='fp8'"):
        choose_amp("fp8", device_type="cuda", capability=(9, 0))


def test_auto_on_an_emulating_gpu_picks_fp16(monkeypatch):
    """A V100: ``torch.cuda.is_bf16_supported()`` says True (emulation); the choice is fp16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.version, "hip", None)
    assert resolve_amp(torch.device("cuda:0"), "auto") == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_amp(torch.device("cuda:0"), "auto") == "bf16"


def test_setup_amp_on_this_cpu():
    autocast, scaler = setup_amp(torch.device("cpu"), "none")
    assert autocast is contextlib.nullcontext and not scaler.is_enabled()
    autocast, scaler = setup_amp(torch.device("cpu"), "bf16")
    with autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert not scaler.is_enabled()
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert resolve_amp(torch.device("cpu"), "auto") == ("bf16" if native else "none")


# ------------------------------------------------------------------ gradient accumulation


class Linear(nn.Module):
    """The interface ``train_one_epoch`` uses (``output_device``), on a model whose gradients are easy to check."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)
        self.output_device = torch.device("cpu")

    def forward(self, x):
        return self.fc(x)


def _batches(n: int, failed=None) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"clip": torch.randn(2, 6, generator=g), "label": torch.randint(0, 3, (2,), generator=g),
             "index": torch.arange(2 * i, 2 * i + 2), "failed": (failed or {}).get(i, [])} for i in range(n)]


class CountingSGD(torch.optim.SGD):
    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None):
        self.grads.append(self.param_groups[0]["params"][0].grad.clone())
        return super().step(closure)


def _run(batches, *, accum_steps: int, **kw):
    model = Linear()
    opt = CountingSGD(model.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    sched = create_scheduler(opt, warmup_steps=0, total_steps=100, min_ratio=1.0)
    autocast, scaler = setup_amp(torch.device("cpu"), "none")
    out = train_one_epoch(model, batches, nn.CrossEntropyLoss(), opt, sched, epoch=0, autocast=autocast, scaler=scaler,
                          accum_steps=accum_steps, show_progress=False, log_every=1000, **kw)
    return model, opt, sched, out


def _grad_of(batches) -> torch.Tensor:
    model = Linear()
    loss = sum(nn.functional.cross_entropy(model(b["clip"]), b["label"]) for b in batches) / len(batches)
    loss.backward()
    return model.fc.weight.grad


@pytest.mark.parametrize("n, accum", [(5, 2), (7, 3), (6, 3), (4, 1), (2, 4)])
def test_optimizer_steps_equal_the_schedules_count(n, accum):
    _, opt, sched, out = _run(_batches(n), accum_steps=accum)
    assert len(opt.grads) == out["step"] == sched.last_epoch == updates_per_epoch(n, accum)
    assert updates_per_epoch(n, accum) == -(-n // accum)


def test_partial_group_gradient_is_the_mean_of_its_batches():
    batches = _batches(7)
    _, opt, _, _ = _run(batches, accum_steps=3)  # groups: 0-2, 3-5, and the partial group 6
    assert len(opt.grads) == 3
    torch.testing.assert_close(opt.grads[0], _grad_of(batches[0:3]))
    torch.testing.assert_close(opt.grads[1], _grad_of(batches[3:6]))
    torch.testing.assert_close(opt.grads[2], _grad_of(batches[6:7]))  # not a third of it
    batches = _batches(5)
    _, opt, _, _ = _run(batches, accum_steps=3)  # 0-2 and the partial group 3-4
    torch.testing.assert_close(opt.grads[1], _grad_of(batches[3:5]))


def test_accumulation_groups():
    assert [accumulation_group(b, accum_steps=3, total=7) for b in range(7)] == [
        (0, 3), (1, 3), (2, 3), (0, 3), (1, 3), (2, 3), (0, 1)]
    assert [accumulation_group(b, accum_steps=4, total=2) for b in range(2)] == [(0, 2), (1, 2)]


# ------------------------------------------------------------------ bad videos (one process; two: test_distributed)


def test_bad_video_limit_stops_mid_epoch_with_the_files():
    failures = DecodeFailures(10, 0.15)  # more than 1.5 bad videos stops
    batches = _batches(6, failed={1: [("a.avi", "empty file")], 3: [("b.avi", "truncated")]})
    with pytest.raises(TooManyBadVideos, match="2 of 10 videos failed") as e:
        _run(batches, accum_steps=1, on_failed=failures.record)
    assert "a.avi: empty file" in str(e.value) and "b.avi: truncated" in str(e.value)
    _, _, _, out = _run(batches[:3], accum_steps=1, on_failed=DecodeFailures(10, 0.15).record)
    assert out["failed"] == [("a.avi", "empty file")]


def test_step_agreement_is_one_all_reduce_and_gathers_only_with_failures(monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "all_reduce_sum", lambda v, d: calls.append(("reduce", list(v))) or list(v))
    monkeypatch.setattr(loop, "gather_objects", lambda obj: calls.append(("gather", obj)) or [obj])
    assert loop._agree_on_step(torch.tensor(1.0), [], torch.device("cpu")) == (False, False, [], False)
    assert calls == [("reduce", [0.0, 0.0, 0.0])]
    calls.clear()
    bad = loop._agree_on_step(torch.tensor(float("nan")), [("x.avi", "r")], torch.device("cpu"), stop=True)
    assert bad == (True, True, [("x.avi", "r")], True)
    assert calls == [("reduce", [1.0, 1.0, 1.0]), ("gather", [("x.avi", "r")])]
