"""The CUDA paths: mixed precision, model parallel, DDP over NCCL, DDP + placement, SyncBN, resume.

Run with ``pytest -m gpu`` on a machine with CUDA; every test here is skipped without CUDA, and the
multi-GPU ones without enough GPUs. NOT YET RUN ON A GPU: no GPU was available when they were
written. Their CPU counterparts pass (tests/engine/test_distributed.py runs the same workers with
gloo, tests/tools/test_gpu_selfcheck.py the self-check's DDP worker), so what is untested is the
CUDA side itself.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actionrec.engine import selfcheck
from actionrec.engine.checkpoint import load_checkpoint
from actionrec.engine.loop import resolve_amp, setup_amp
from actionrec.models.factory import create_model
from tests.helpers import REPO, TWO_HEADS, tiny_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
two_gpus = pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
four_gpus = pytest.mark.skipif(GPUS < 4, reason="needs 4 GPUs (2 ranks x 2 devices)")
CAPABILITY = torch.cuda.get_device_capability(0) if GPUS else (0, 0)
WORKER = REPO / "tests" / "engine" / "ddp_worker.py"


def _load_worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


@pytest.fixture(autouse=True)
def exact_fp32(monkeypatch):
    # Comparisons with CPU references need fp32 matmuls and convolutions (no TF32).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def torchrun(*args: str, nproc: int = 2, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def assert_close_to_cpu(state: dict, reference: dict) -> None:
    for k, v in state.items():
        torch.testing.assert_close(v.cpu(), reference[k], atol=1e-3, rtol=1e-2, msg=k)


# ------------------------------------------------------------------ mixed precision


def test_amp_auto_follows_compute_capability():
    native = CAPABILITY >= (8, 0) or torch.version.hip is not None
    assert resolve_amp(torch.device("cuda:0"), "auto") == ("bf16" if native else "fp16")


@pytest.mark.skipif(CAPABILITY < (8, 0), reason="bf16 is emulated below compute capability 8.0")
def test_bf16_step():
    r = selfcheck.train_steps("cuda:0", "cuda:0", "bf16", steps=3)
    assert r["amp"] == "bf16" and r["finite"] and not r["scaler_enabled"]


def test_fp16_step_uses_the_grad_scaler():
    r = selfcheck.train_steps("cuda:0", "cuda:0", "fp16", steps=3)
    assert r["amp"] == "fp16" and r["finite"]
    assert r["scaler_enabled"] and 0 < r["scale"] <= 2.0**16  # starts at 65536, halves on overflow


@pytest.mark.parametrize("amp, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_backbone_runs_in_reduced_precision_and_the_head_in_fp32(amp, dtype):
    if amp == "bf16" and CAPABILITY < (8, 0):
        pytest.skip("bf16 is emulated below compute capability 8.0")
    # test_resnet: BatchNorm keeps the autocast dtype (GroupNorm, as in the DDP worker's model, runs in fp32).
    model = create_model("cnn_lstm", num_classes=4, backbone="test_resnet", hidden_size=8).place("cuda:0", "cuda:0")
    autocast, _ = setup_amp(torch.device("cuda:0"), amp)
    x = torch.randn(2, 4, 3, 32, 32, device="cuda:0")
    with autocast():
        assert model.clip_features(x).dtype == dtype
        assert model(x).dtype == torch.float32


# ------------------------------------------------------------------ model parallel, DDP, both, SyncBN


@pytest.fixture(scope="module")
def single_process() -> dict:
    """The CPU reference: one process on the global batch (2 ranks x 2 clips = 4)."""
    return worker.train(batch_size=4).state_dict()


@two_gpus
def test_model_parallel_cnn_on_cuda0_lstm_on_cuda1_matches_cpu(single_process):
    placed = worker.train(batch_size=4, placement=("cuda:0", "cuda:1"))
    assert {p.device for p in placed.backbone.parameters()} == {torch.device("cuda:0")}
    assert {p.device for p in placed.head.parameters()} == {torch.device("cuda:1")}
    assert_close_to_cpu(placed.state_dict(), single_process)


@two_gpus
def test_nccl_ddp_two_ranks_have_equal_weights(tmp_path, single_process):
    torchrun(str(WORKER), str(tmp_path), "cuda:{local_rank}", "cuda:{local_rank}")
    r0, r1 = (torch.load(tmp_path / f"ddp_placed_rank{r}.pt")["state"] for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert_close_to_cpu(r0, single_process)
    e0 = torch.load(tmp_path / "eval_rank0.pt")
    assert e0["backend"] == "nccl" and e0["indices"].tolist() == list(range(7))


@four_gpus
def test_ddp_with_two_gpus_per_rank(tmp_path, single_process):
    torchrun(str(WORKER), str(tmp_path), "cuda:{2*local_rank}", "cuda:{2*local_rank+1}")
    p0, p1 = (torch.load(tmp_path / f"ddp_placed_rank{r}.pt")["state"] for r in (0, 1))
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    assert_close_to_cpu(p0, single_process)
    e0 = torch.load(tmp_path / "eval_rank0.pt")
    assert e0["backend"] == "nccl" and e0["indices"].tolist() == list(range(7))


@two_gpus
def test_sync_bn_makes_batch_norm_statistics_global():
    # Each rank trains on its own clips: BN running statistics agree across ranks only with SyncBN.
    plain = selfcheck.run_ddp("cuda:{local_rank}", "cuda:{local_rank}", steps=2)
    synced = selfcheck.run_ddp("cuda:{local_rank}", "cuda:{local_rank}", steps=2, sync_bn=True)
    assert plain[0]["params_digest"] == plain[1]["params_digest"]
    assert plain[0]["state_digest"] != plain[1]["state_digest"] and plain[0]["sync_bn_layers"] == 0
    assert synced[0]["sync_bn_layers"] > 0 and synced[0]["state_digest"] == synced[1]["state_digest"]
    assert all(r["backend"] == "nccl" and r["finite"] for r in plain + synced)


# ------------------------------------------------------------------ tools on CUDA


def _train(root: Path, out: Path, *extra: str, gpus: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), *tiny_overrides(root, out), "train.device=cuda:0",
           "train.max_steps_per_epoch=2", "train.name=gpu", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": gpus})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _eval(ckpt: Path, device: str, out: Path) -> None:
    """tools/eval.py on ``ckpt`` at 1 clip on ``device``: it must finish and print its result."""
    cmd = [sys.executable, str(REPO / "tools" / "eval.py"), str(ckpt), "eval.num_clips=1", "--device", device,
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0 and "top-1" in proc.stdout, proc.stderr[-3000:]


def test_train_tool_on_cuda_with_amp_auto(tiny_dataset, tmp_path):
    proc = _train(tiny_dataset, tmp_path, gpus="0")
    assert f"amp {resolve_amp(torch.device('cuda:0'), 'auto')} (auto)" in proc.stderr
    ckpt = load_checkpoint(tmp_path / "gpu" / "last.pt")
    assert ckpt["step"] == 2 and len(ckpt["rng"]["cuda"]) == 1
    assert (ckpt["scaler"] is not None) == (resolve_amp(torch.device("cuda:0"), "auto") == "fp16")


@two_gpus
def test_resume_after_the_gpu_count_changed(tiny_dataset, tmp_path):
    _train(tiny_dataset, tmp_path, "train.epochs=1", gpus="0,1")
    assert len(load_checkpoint(tmp_path / "gpu" / "last.pt")["rng"]["cuda"]) == 2
    fewer = _train(tiny_dataset, tmp_path, "train.epochs=2", "--resume", "auto", gpus="0")  # was an IndexError
    assert "resumed from" in fewer.stderr and "epoch 2, batch 0, step 2" in fewer.stderr
    assert len(load_checkpoint(tmp_path / "gpu" / "last.pt")["rng"]["cuda"]) == 1
    more = _train(tiny_dataset, tmp_path, "train.epochs=3", "--resume", "auto", gpus="0,1")
    assert "epoch 3, batch 0, step 4" in more.stderr
    assert load_checkpoint(tmp_path / "gpu" / "last.pt")["step"] == 6


@pytest.mark.parametrize("gpus,placement", [("0", ()), pytest.param("0,1", ("model.placement.cnn=cuda:0",
                                                                             "model.placement.lstm=cuda:1"),
                                                                 marks=two_gpus)])
def test_two_heads_train_one_after_the_other_on_cuda_and_resume_between_them(tiny_dataset, tmp_path, gpus,
                                                                              placement):
    # model.heads=2 on the cached features: the active_head buffer lives with the heads (model-parallel
    # placement puts them on another GPU); the second head's epochs leave the first exactly as it was.
    extra = (*TWO_HEADS, f"data.cache_dir={tmp_path / 'cache'}", *placement)
    _train(tiny_dataset, tmp_path, *extra, "--stop-after", "2", gpus=gpus)
    first = load_checkpoint(tmp_path / "gpu" / "last.pt")["model"]
    assert int(first["active_head"]) == 0
    proc = _train(tiny_dataset, tmp_path, *extra, "--resume", "auto", gpus=gpus)
    assert "head 2 of 2 trains in epochs 3-4" in proc.stderr
    last = load_checkpoint(tmp_path / "gpu" / "last.pt")["model"]
    assert int(last["active_head"]) == 1
    mine = [k for k in last if k.startswith(("head.", "contrast."))]
    assert mine and all(torch.equal(last[k].cpu(), first[k].cpu()) for k in mine)
    assert not all(torch.equal(last[k].cpu(), first[k].cpu()) for k in last if k.startswith("more_heads.0."))
    _eval(tmp_path / "gpu" / "last.pt", "cpu", tmp_path / "eval")


def test_gpu_trained_checkpoint_evaluates_on_cuda_and_cpu(tiny_dataset, tmp_path):
    _train(tiny_dataset, tmp_path, "train.amp=fp16", gpus="0")
    ckpt = tmp_path / "gpu" / "last.pt"
    for device in ("cuda:0", "cpu"):
        _eval(ckpt, device, tmp_path / device.replace(":", ""))


def test_selfcheck_reports_no_failure():
    checks = selfcheck.run_checks(steps=1, cpu=False)
    assert not [c for c in checks if c.failed], selfcheck.format_table(checks)
    assert checks[0].status == "ok" and checks[0].step_ms > 0
