"""GPU self-check: which training modes work on this machine, and how long one step of each takes.

Each mode trains a tiny CNN + BiLSTM (timm ``test_resnet``, random 64 px clips) for a few steps
through the real ``train_one_epoch``: fp32, bf16 and fp16 + GradScaler on the first GPU, the CNN and
the LSTM on two GPUs (model parallel), DDP over NCCL with two ranks (launched with torchrun), DDP
with two GPUs per rank, and SyncBatchNorm. A mode that needs what the machine lacks is skipped with
the reason; one that raises is reported as failed with the first line of the error.

``tools/gpu_selfcheck.py`` prints the table; torchrun runs this module as the DDP worker:
``torchrun --standalone --nproc_per_node=2 -m actionrec.engine.selfcheck OUT_DIR CNN HEAD AMP STEPS SYNC_BN``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from actionrec.engine import distributed as D
from actionrec.engine.checkpoint import unwrap
from actionrec.engine.loop import resolve_amp, setup_amp, train_one_epoch
from actionrec.engine.optim import create_optimizer, create_scheduler
from actionrec.models.factory import create_model
from actionrec.errors import first_line
from actionrec.models.losses import create_loss

NUM_CLASSES = 4


@dataclass
class Check:
    mode: str
    status: str  # "ok", "FAILED: ...", "skipped: ..."
    step_ms: float | None = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED")


def describe_devices() -> list[str]:
    """One line per device: the CPU, then every visible GPU (or why there is none)."""
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    lines = [f"cpu: {torch.get_num_threads()} torch threads, {torch.backends.cpu.get_cpu_capability()}, "
             f"native bf16: {'yes' if native else 'no'}, train.amp=auto -> {resolve_amp(torch.device('cpu'), 'auto')}"]
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        return lines + [f"CUDA is not available (torch {torch.__version__}, {built}): GPU modes are skipped"]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        dev = torch.device(f"cuda:{i}")
        lines.append(f"cuda:{i}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
                     f"train.amp=auto -> {resolve_amp(dev, 'auto')}")
    return lines


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train_steps(cnn: str, head: str, amp: str, *, steps: int = 3, ddp: bool = False, sync_bn: bool = False,
                batch: int = 4, clip_len: int = 4, size: int = 64, seed: int = 0) -> dict:
    """One warm-up step, then ``steps`` timed steps of ``train_one_epoch`` on random clips.

    Args:
        cnn, head: devices of the backbone and the LSTM head (model parallel when they differ).
        amp: ``train.amp`` for the backbone's device (auto | none | bf16 | fp16).
        ddp: wrap in DistributedDataParallel (needs an initialised process group); each rank's
            clips differ (seeded by rank), its initial weights do not.
        sync_bn: convert BatchNorm to SyncBatchNorm (with ``ddp``).

    Returns:
        dict: amp (the precision used), loss, finite, step_ms (mean of the timed steps),
        scaler_enabled, scale (None without fp16), sync_bn_layers, params and state digests.
    """
    torch.manual_seed(seed)  # same initial weights on every rank
    model = create_model("cnn_lstm", num_classes=NUM_CLASSES, backbone="test_resnet", hidden_size=16, num_layers=1,
                         feature_grid=2, dropout=0.0, lstm_dropout=0.0).place(cnn, head)
    net = D.wrap_ddp(model, sync_bn=sync_bn) if ddp else model
    core = unwrap(net)
    rank = torch.distributed.get_rank() if ddp else 0
    g = torch.Generator().manual_seed(seed + 1 + rank)
    batches = [{"clip": torch.randn(batch, clip_len, 3, size, size, generator=g),
                "label": torch.randint(0, NUM_CLASSES, (batch,), generator=g), "index": torch.arange(batch),
                "failed": []} for _ in range(steps + 1)]
    optimizer = create_optimizer(core, "sgd", lr=0.01, weight_decay=0.0)
    scheduler = create_scheduler(optimizer, warmup_steps=0, total_steps=steps + 1, min_ratio=1.0)
    autocast, scaler = setup_amp(core.input_device, amp)
    criterion = create_loss("ce").to(core.output_device)
    kw = dict(autocast=autocast, scaler=scaler, show_progress=False, clip_grad_norm=1.0)
    train_one_epoch(net, batches[:1], criterion, optimizer, scheduler, epoch=0, **kw)  # cudnn autotune, allocator
    out = train_one_epoch(net, batches[1:], criterion, optimizer, scheduler, epoch=1, **kw)
    return {
        "amp": resolve_amp(core.input_device, amp),
        "loss": out["loss"],
        "finite": bool(torch.isfinite(torch.tensor(out["loss"]))),
        "step_ms": 1000 * out["time_s"] / max(out["steps"], 1),
        "scaler_enabled": scaler.is_enabled(),
        "scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
        "sync_bn_layers": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in core.modules()),
        "params_digest": _digest(core.parameters()),
        "state_digest": _digest(core.state_dict().values()),
        "devices": sorted({str(p.device) for p in core.parameters()}),
    }


def ddp_worker(out_dir: Path, cnn: str, head: str, amp: str, steps: int, sync_bn: bool) -> None:
    """One torchrun rank: ``train_steps`` under DDP, result written to ``out_dir/rank{r}.json``."""
    info = D.init_distributed("auto", device=cnn)
    try:
        cnn_dev, head_dev = D.resolve_placement("cpu", cnn, head, info.local_rank)
        D.bind_devices([cnn_dev, head_dev])
        result = train_steps(str(cnn_dev), str(head_dev), amp, steps=steps, ddp=True, sync_bn=sync_bn)
        result.update(rank=info.rank, backend=info.backend)
    except Exception as e:
        # Written for run_ddp, whose table row shows it; torchrun's own report only says "failed".
        (out_dir / f"rank{info.rank}.json").write_text(json.dumps({"error": first_line(e)}))
        raise
    (out_dir / f"rank{info.rank}.json").write_text(json.dumps(result))
    D.cleanup()


def run_ddp(cnn: str, head: str, amp: str = "auto", *, steps: int = 3, sync_bn: bool = False, nproc: int = 2,
            timeout: float = 300) -> list[dict]:
    """Launch ``ddp_worker`` on ``nproc`` ranks with torchrun; every rank's result dict, by rank.

    Raises:
        RuntimeError: torchrun failed (the message ends with the workers' last output lines).
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "actionrec.engine.selfcheck", tmp, cnn, head, amp, str(steps), str(int(sync_bn))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        files = [Path(tmp) / f"rank{r}.json" for r in range(nproc)]
        ranks = [json.loads(f.read_text()) if f.is_file() else {"error": "no result"} for f in files]
        errors = [f"rank {r}: {x['error']}" for r, x in enumerate(ranks) if "error" in x]
        if proc.returncode != 0 or errors:
            last = (proc.stderr.strip().splitlines() or [""])[-1]
            raise RuntimeError(f"torchrun exit {proc.returncode}; " + ("; ".join(errors) if errors else last))
        return ranks


def _single(mode: str, cnn: str, head: str, amp: str, steps: int) -> Check:
    r = train_steps(cnn, head, amp, steps=steps)
    detail = f"amp {r['amp']}, loss {r['loss']:.3f}, on {'+'.join(r['devices'])}"
    if r["scaler_enabled"]:
        detail += f", GradScaler scale {r['scale']:g}"
    return Check(mode, "ok" if r["finite"] else "FAILED: non-finite loss", r["step_ms"], detail)


def _ddp(mode: str, cnn: str, head: str, steps: int, sync_bn: bool = False) -> Check:
    ranks = run_ddp(cnn, head, steps=steps, sync_bn=sync_bn)
    # Parameters agree after DDP's gradient all-reduce; BN running statistics only with SyncBN.
    key = "state_digest" if sync_bn else "params_digest"
    same = len({r[key] for r in ranks}) == 1
    detail = (f"{ranks[0]['backend']}, {len(ranks)} ranks on {', '.join('+'.join(r['devices']) for r in ranks)}, "
              f"{'weights' if not sync_bn else 'weights and BN statistics'} {'equal' if same else 'DIFFER'} across ranks")
    if sync_bn:
        detail += f", {ranks[0]['sync_bn_layers']} SyncBatchNorm layers"
    ok = same and all(r["finite"] for r in ranks) and (not sync_bn or ranks[0]["sync_bn_layers"] > 0)
    return Check(mode, "ok" if ok else "FAILED: ranks disagree", max(r["step_ms"] for r in ranks), detail)


GPU_MODES = [  # (mode, GPUs needed, check)
    ("cuda:0 fp32", 1, lambda s: _single("cuda:0 fp32", "cuda:0", "cuda:0", "none", s)),
    ("cuda:0 bf16", 1, lambda s: _single("cuda:0 bf16", "cuda:0", "cuda:0", "bf16", s)),
    ("cuda:0 fp16 + GradScaler", 1, lambda s: _single("cuda:0 fp16 + GradScaler", "cuda:0", "cuda:0", "fp16", s)),
    ("placement cnn=cuda:0 lstm=cuda:1", 2,
     lambda s: _single("placement cnn=cuda:0 lstm=cuda:1", "cuda:0", "cuda:1", "auto", s)),
    ("DDP nccl, 2 ranks (torchrun)", 2,
     lambda s: _ddp("DDP nccl, 2 ranks (torchrun)", "cuda:{local_rank}", "cuda:{local_rank}", s)),
    ("DDP + placement, 2 ranks x 2 GPUs", 4,
     lambda s: _ddp("DDP + placement, 2 ranks x 2 GPUs", "cuda:{2*local_rank}", "cuda:{2*local_rank+1}", s)),
    ("SyncBN, DDP 2 ranks", 2,
     lambda s: _ddp("SyncBN, DDP 2 ranks", "cuda:{local_rank}", "cuda:{local_rank}", s, sync_bn=True)),
]


def _guarded(mode: str, fn) -> Check:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a self-check reports every failure as a table row
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return Check(mode, f"FAILED: {type(e).__name__}: {first[:160]}")


def run_checks(*, steps: int = 3, cpu: bool = True) -> list[Check]:
    """Every mode's ``Check``: the CPU step (when ``cpu``), then the GPU modes or why they are skipped."""
    checks = [_guarded("cpu fp32", lambda: _single("cpu fp32", "cpu", "cpu", "none", steps))] if cpu else []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for mode, need, fn in GPU_MODES:
        if gpus == 0:
            checks.append(Check(mode, "skipped: no CUDA"))
        elif gpus < need:
            checks.append(Check(mode, f"skipped: needs {need} GPUs, {gpus} visible"))
        elif "bf16" in mode and resolve_amp(torch.device("cuda:0"), "auto") == "fp16":
            cc = "%d.%d" % torch.cuda.get_device_capability(0)
            checks.append(Check(mode, f"skipped: bf16 is emulated on compute capability {cc}; auto uses fp16"))
        else:
            checks.append(_guarded(mode, lambda fn=fn: fn(steps)))
    return checks


def format_table(checks: list[Check]) -> str:
    rows = [("mode", "status", "step ms", "detail")]
    rows += [(c.mode, c.status, f"{c.step_ms:.1f}" if c.step_ms is not None else "-", c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(r[i].ljust(widths[i]) for i in range(3)) + " | " + r[3] for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * 6)
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":  # the torchrun worker of run_ddp
    out, cnn_spec, head_spec, amp_mode, n_steps, sync = sys.argv[1:7]
    torch.set_num_threads(1)
    ddp_worker(Path(out), cnn_spec, head_spec, amp_mode, int(n_steps), sync == "1")
