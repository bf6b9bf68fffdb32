"""The training and evaluation loops. Each takes what it uses as arguments and returns metrics."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from actionrec.engine.distributed import all_reduce_sum, gather_objects
from actionrec.engine.metrics import classification_report, pool_views
from actionrec.engine.threads import cpu_threads  # noqa: F401  (moved; tools/benchmark.py imports it from here)
from actionrec.errors import UserError

log = logging.getLogger(__name__)


def choose_amp(mode: str, *, device_type: str, capability: tuple[int, int] | None = None,
               native_bf16: bool = False) -> str:
    """The precision a run uses: 'bf16', 'fp16' or 'none'. Pure: decided from the arguments alone.

    ``mode='auto'``: on CUDA, bf16 when the GPU computes it natively (compute capability >= 8.0,
    Ampere and newer, or ``native_bf16`` for ROCm GPUs, whose capability is not on NVIDIA's scale),
    fp16 with a GradScaler otherwise (V100 7.0, T4 7.5): ``torch.cuda.is_bf16_supported()`` also
    counts emulated bf16, which runs on those GPUs but without tensor cores. On CPU, bf16 only
    where oneDNN has native bf16 kernels (``native_bf16``): on an AVX2-only CPU (the AMD EPYC CI
    machines) bf16 autocast made a resnet18 train step 27x slower than fp32, so 'auto' keeps fp32.
    Any other device type: fp32. An explicit 'bf16', 'fp16' or 'none' is kept as given.

    Args:
        mode: ``train.amp`` (auto | none | bf16 | fp16).
        device_type: 'cuda', 'cpu', ...
        capability: the CUDA device's (major, minor) compute capability; None off CUDA.
        native_bf16: the device has native bf16 arithmetic (CPU: oneDNN; CUDA: ROCm).

    Raises:
        ValueError: fp16 off CUDA, or an unknown mode.
    """
    if mode not in ("auto", "none", "bf16", "fp16"):
        raise ValueError(f"train.amp={mode!r}: use auto, none, bf16 or fp16")
    if mode == "auto":
        if device_type == "cuda":
            mode = "bf16" if native_bf16 or (capability is not None and tuple(capability) >= (8, 0)) else "fp16"
        elif device_type == "cpu":
            mode = "bf16" if native_bf16 else "none"
        else:
            mode = "none"
    if mode == "fp16" and device_type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use bf16 on CPU")
    return mode


def amp_facts(device: torch.device) -> dict:
    """What ``choose_amp`` needs to know about ``device``: its type, capability and native bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"device_type": "cuda", "capability": torch.cuda.get_device_capability(device),
                "native_bf16": torch.version.hip is not None}
    if device.type == "cpu":
        return {"device_type": "cpu", "capability": None,
                "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}
    return {"device_type": device.type, "capability": None, "native_bf16": False}


def resolve_amp(device: torch.device, mode: str) -> str:
    """``choose_amp`` for this machine's ``device``: 'bf16', 'fp16' or 'none'."""
    return choose_amp(mode, **amp_facts(device))


def setup_amp(device: torch.device, mode: str) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.amp.GradScaler]:
    """Decide mixed precision once: returns (autocast context factory, grad scaler).

    The precision is ``resolve_amp(device, mode)``. The scaler is a no-op unless fp16 is used, so
    the loop calls it unconditionally.
    """
    device = torch.device(device)
    facts = amp_facts(device)
    mode = choose_amp(mode, **facts)
    if mode == "bf16" and facts["device_type"] == "cuda" and choose_amp("auto", **facts) == "fp16":
        log.warning("train.amp=bf16 on %s (compute capability %d.%d) is emulated, without tensor cores; "
                    "train.amp=auto would use fp16 there", device, *facts["capability"])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16")
    if dtype is None:
        return contextlib.nullcontext, scaler
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), scaler


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN/inf and ``nan_policy`` is 'stop'."""


def accumulation_group(batch: int, *, accum_steps: int, total: int) -> tuple[int, int]:
    """(position in its group, group size) of 0-based ``batch`` of an epoch of ``total`` batches.

    Groups of ``accum_steps`` micro-batches start at batch 0; the last group holds the remaining
    ``total % accum_steps`` batches when that is not 0, so an epoch takes
    ``ceil(total / accum_steps)`` optimizer steps (``optim.updates_per_epoch``).
    """
    start = batch - batch % accum_steps
    return batch - start, max(1, min(accum_steps, total - start))


def _agree_on_step(loss: torch.Tensor, failed: list, device: torch.device,
                   stop: bool = False) -> tuple[bool, bool, list, bool]:
    """(non-finite here, non-finite on any rank, the decode failures of this step on all ranks,
    a stop was requested on any rank).

    One all-reduce per step, after the forward and before the backward. Under DDP every rank must
    take the same branch: a rank that skipped backward, or stopped at the bad-video limit, alone
    would leave the others waiting in their next collective until the launcher killed them. The
    failures are gathered only in steps where some rank had one.
    """
    local_bad = not bool(torch.isfinite(loss))
    any_bad, any_failed, any_stop = all_reduce_sum([float(local_bad), float(bool(failed)), float(stop)], device)
    if any_failed > 0:
        failed = [f for part in gather_objects(list(failed)) for f in part]
    return local_bad, any_bad > 0, list(failed), any_stop > 0


class EpochMeter:
    """Running loss and accuracy, throughput, data-wait time and the progress bar of one training epoch.

    Beside ``train_one_epoch`` as torchvision's ``MetricLogger`` is beside its step loop.
    """

    def __init__(self, *, total: int, initial: int, epoch: int, show_progress: bool):
        self.total = total
        self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}", disable=not show_progress,
                        dynamic_ncols=True, leave=False)
        self.loss_sum = self.correct = self.seen = 0.0
        self.data_wait = 0.0
        self.t_start = self.t_last = time.perf_counter()

    def batch_arrived(self) -> None:
        self.data_wait += time.perf_counter() - self.t_last

    def batch_done(self, loss: torch.Tensor | None = None, logits: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None, *, wait_starts: bool = False) -> None:
        """Count a trained batch (or, without arguments, a skipped one) and advance the bar."""
        if labels is not None:
            n = labels.shape[0]
            self.loss_sum += loss.item() * n
            self.correct += (logits.argmax(1) == labels).sum().item()
            self.seen += n
        self.bar.update(1)
        if wait_starts:
            self.wait_starts()

    def wait_starts(self) -> None:
        """Time from here to the next ``batch_arrived`` counts as waiting for data."""
        self.t_last = time.perf_counter()

    def log_step(self, on_log: Callable[[dict], None] | None, loss: float, lr: float, *, grad_norm: float,
                 step: int, batches_done: int, epoch: int) -> None:
        """Show optimizer step ``step``'s metrics on the progress bar and pass them to ``on_log``."""
        elapsed = max(time.perf_counter() - self.t_start, 1e-9)
        rate = self.seen / elapsed
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
        if on_log is not None:
            on_log({"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm, "train/clips_per_s": rate,
                    "train/data_wait_frac": self.data_wait / elapsed, "step": step,
                    "epoch": epoch + batches_done / max(self.total, 1)})

    def summary(self, device: torch.device) -> dict:
        """Epoch totals, loss and accuracy summed over all ranks."""
        self.bar.close()
        elapsed = time.perf_counter() - self.t_start
        loss_sum, correct, seen = all_reduce_sum([self.loss_sum, self.correct, self.seen], device)
        return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1),
                "clips_per_s": seen / max(elapsed, 1e-9), "data_wait_frac": self.data_wait / max(elapsed, 1e-9),
                "time_s": elapsed}


def _forward(model: nn.Module, criterion: nn.Module, clips, labels: torch.Tensor, autocast: Callable,
             distill: Callable | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss): the label loss plus the distillation term, in fp32."""
    with autocast():
        logits = model(clips)
    loss = criterion(logits.float(), labels)
    if distill is not None:
        loss = loss + distill(clips, logits.float())
    return logits, loss


def _skip_nonfinite(loss: torch.Tensor, local_bad: bool, nan_policy: str, optimizer, epoch: int, batch_no: int,
                    videos: list) -> None:
    """A non-finite loss on some rank: raise NonFiniteLossError ('stop') or drop the step's gradients ('skip')."""
    where = "" if local_bad else " on another rank"
    msg = (f"non-finite loss{where} ({loss.item()} here) at epoch {epoch + 1}, batch {batch_no}, "
           f"lr {optimizer.param_groups[0]['lr']:.3g}; videos: {videos}")
    if nan_policy == "stop":
        raise NonFiniteLossError(msg + ". Lower optim.lr, enable clipping, or set train.nan_policy=skip.")
    log.warning("skipping step: %s", msg)
    optimizer.zero_grad(set_to_none=True)


def _optimizer_step(model: nn.Module, optimizer, scheduler, scaler, *, clip_grad_norm: float, measure: bool,
                    last_norm: float) -> float:
    """Unscale and clip (or only measure) the gradients, step, zero them; the norm (``last_norm`` when not measured)."""
    grad_norm = last_norm
    if clip_grad_norm > 0 or measure:
        scaler.unscale_(optimizer)
        # With clipping off, max_norm=inf only measures the norm, so it is still logged.
        grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm or math.inf))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return grad_norm


def _agree_and_report(loss: torch.Tensor, batch: dict, device: torch.device, stop_requested: Callable | None,
                      on_failed: Callable | None) -> tuple[bool, bool, list, bool]:
    """``_agree_on_step`` for ``batch``, passing the gathered decode failures to ``on_failed``."""
    local_bad, any_bad, step_failed, any_stop = _agree_on_step(
        loss, batch["failed"], device, stop=stop_requested is not None and stop_requested())
    if step_failed and on_failed is not None:
        on_failed(step_failed)  # the same list on every rank: all stop here, or none
    return local_bad, any_bad, step_failed, any_stop


def train_one_epoch(
    model: nn.Module, loader, criterion: nn.Module, optimizer: torch.optim.Optimizer, scheduler, *,
    epoch: int, autocast: Callable, scaler: torch.amp.GradScaler, accum_steps: int = 1, clip_grad_norm: float = 0.0,
    nan_policy: str = "stop", max_steps: int = 0, skip_batches: int = 0, log_every: int = 10,
    show_progress: bool = True, on_log: Callable[[dict], None] | None = None,
    on_save: Callable[[int, int], None] | None = None, save_every_steps: int = 0,
    on_failed: Callable[[list], None] | None = None, stop_requested: Callable[[], bool] | None = None,
    step: int = 0, distill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Train for one epoch.

    Args:
        model: the (possibly DDP-wrapped) model; inputs go to its first device, the loss is computed
            where the logits come out (the head's device under model parallelism).
        loader: yields dicts from ``collate_clips``.
        scheduler: stepped after every optimizer step.
        epoch: 0-based epoch (for messages).
        autocast, scaler: from ``setup_amp``.
        accum_steps: micro-batches per optimizer step (DDP gradients sync on the last one only). A final
            partial group steps too, its loss divided by its own size, so every step averages its batches' gradients.
        clip_grad_norm: max global gradient norm (0: off).
        nan_policy: 'stop' raises NonFiniteLossError, 'skip' drops that step and counts it.
        max_steps: cap on batches this epoch (0: all).
        skip_batches: batches already done before a mid-epoch resume (the sampler skipped them).
        on_log: called every ``log_every`` optimizer steps with step metrics (main rank logging).
        on_save: called with (batches done, global step) every ``save_every_steps`` optimizer steps.
        on_failed: called with a step's (path, reason) decode failures, gathered from all ranks, as they
            happen, so they are logged at once and the bad-video limit can stop the run mid-epoch (every rank).
        stop_requested: polled every batch (``StopRequest.requested``); once it is true on any rank, every
            rank finishes the optimizer step in progress and the epoch ends early with ``preempted`` set.
        step: global optimizer step at the start of the epoch.
        distill: ``engine.distill.Distiller``: (clips, student logits) -> the soft-target term added
            to the label loss (knowledge distillation); None: the label loss alone.

    Returns:
        dict with loss, acc (train top-1 on the augmented clips), clips_per_s, data_wait_frac, steps, step
        (global), skipped_nonfinite, failed (list of (path, reason), all ranks), lr.
    """
    model.train()
    out_device = (model.module if hasattr(model, "module") else model).output_device
    total = min(len(loader) + skip_batches, max_steps or math.inf)
    meter = EpochMeter(total=total, initial=skip_batches, epoch=epoch, show_progress=show_progress)
    nonfinite, failed, grad_norm, batches_done, stopping, preempted = 0, [], float("nan"), skip_batches, False, False
    optimizer.zero_grad(set_to_none=True)
    for batch in loader:
        if max_steps and batches_done >= max_steps:
            break
        meter.batch_arrived()
        clips, labels = batch["clip"], batch["label"].to(out_device, non_blocking=True)
        micro, group = accumulation_group(batches_done, accum_steps=accum_steps, total=total)
        last_micro = micro == group - 1
        with contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync():
            logits, loss = _forward(model, criterion, clips, labels, autocast, distill)
            local_bad, any_bad, step_failed, any_stop = _agree_and_report(loss, batch, out_device, stop_requested,
                                                                          on_failed)
            stopping, failed = stopping or any_stop, failed + step_failed
            if any_bad:
                _skip_nonfinite(loss, local_bad, nan_policy, optimizer, epoch, batches_done, batch["index"].tolist())
                nonfinite, batches_done = nonfinite + 1, batches_done + 1
                meter.batch_done(wait_starts=True)
                continue
            scaler.scale(loss / group).backward()
        if last_micro:
            grad_norm = _optimizer_step(model, optimizer, scheduler, scaler, clip_grad_norm=clip_grad_norm,
                                        measure=(step + 1) % log_every == 0, last_norm=grad_norm)
            step += 1
        batches_done += 1
        meter.batch_done(loss, logits, labels)
        if last_micro and step % log_every == 0:
            meter.log_step(on_log, loss.item(), optimizer.param_groups[-1]["lr"], grad_norm=grad_norm, step=step,
                           batches_done=batches_done, epoch=epoch)
        if last_micro and on_save is not None and save_every_steps and step % save_every_steps == 0:
            on_save(batches_done, step)
        meter.wait_starts()
        if preempted := stopping and last_micro:
            break
    return {**meter.summary(out_device), "steps": batches_done - skip_batches, "batches_done": batches_done,
            "preempted": preempted, "step": step, "skipped_nonfinite": nonfinite,
            "failed": failed,  # gathered step by step: the same list on every rank
            "lr": optimizer.param_groups[-1]["lr"]}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    criterion: nn.Module,
    *,
    class_names: list[str],
    autocast: Callable,
    show_progress: bool = True,
    desc: str = "val",
) -> dict:
    """Multi-view evaluation: softmax averaged over a video's views; DDP shards gathered.

    Every rank evaluates its own shard (``ShardSampler``, no padding); predictions are gathered
    by dataset index so each video counts exactly once.

    Returns:
        ``classification_report`` keys plus ``loss``, ``failed`` and, on every rank, the
        per-video ``scores`` (N, K), ``labels`` and ``indices`` arrays (sorted by index).
    """
    core = model.module if hasattr(model, "module") else model
    core.eval()
    out_device = core.output_device
    scores, labels, indices, failed = [], [], [], []
    loss_sum = 0.0
    for batch in tqdm(loader, desc=desc, disable=not show_progress, dynamic_ncols=True, leave=False):
        failed.extend(batch["failed"])
        if batch["clip"] is None:
            continue
        clips = batch["clip"]  # (B, V, T, C, H, W)
        b, v = clips.shape[:2]
        y = batch["label"].to(out_device)
        with autocast():
            logits = core(clips.flatten(0, 1))  # (B*V, K)
        loss_sum += criterion(logits.float().view(b, v, -1).mean(1), y).item() * b
        scores.append(pool_views(logits, v).cpu())
        labels.append(batch["label"])
        indices.append(batch["index"])
    local = {
        "scores": torch.cat(scores).numpy() if scores else np.zeros((0, len(class_names)), np.float32),
        "labels": torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
        "indices": torch.cat(indices).numpy() if indices else np.zeros(0, np.int64),
        "loss_sum": loss_sum,
        "failed": failed,
    }
    parts = gather_objects(local)
    idx = np.concatenate([p["indices"] for p in parts])
    order = np.argsort(idx, kind="stable")
    all_scores = np.concatenate([p["scores"] for p in parts])[order]
    all_labels = np.concatenate([p["labels"] for p in parts])[order]
    report = classification_report(all_scores, all_labels, class_names)
    report["loss"] = sum(p["loss_sum"] for p in parts) / max(len(idx), 1)
    report["failed"] = [f for p in parts for f in p["failed"]]
    report.update(scores=all_scores, labels=all_labels, indices=idx[order])
    return report
