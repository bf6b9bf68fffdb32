"""Training survives what real datasets and clusters do to it.

* broken videos: skipped, logged once, counted in the epoch table; over the limit the run stops
  with the list of files;
* a hung or crashed decoder: the loader error names the file;
* SIGKILL mid-epoch, in the middle of a checkpoint write: the last checkpoint loads,
  ``--resume auto`` finishes with the same weights as an uninterrupted run, and the metric
  history has every epoch and step exactly once;
* a checkpoint crafted to run code when unpickled is refused and runs nothing.

The kill test runs ``tools/train.py`` through a small wrapper (written into the test's temp dir)
that patches ``torch.save`` in that process only (the N-th call writes half the file, fsyncs,
then blocks), announces it through a marker file, and waits to be killed. Production code has
no test hooks.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actionrec.cli import user_errors
from actionrec.data.dataset import ClipSampling, DecodeFailures, TooManyBadVideos, VideoClipDataset
from actionrec.data.loader import LoaderStalled, build_loader
from actionrec.data.splits import load_split
from actionrec.data.transforms import eval_transform, train_transform
from actionrec.engine.checkpoint import CheckpointError, CheckpointSaver, atomic_save, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("broken_videos", REPO / "tests" / "data" / "broken_videos.py")
broken = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(broken)

# Files the decord reader cannot decode: training must skip exactly these. (truncated_xvid.avi
# is "truncated" for check_videos, but decord reads the 22 frames that are there.)
UNDECODABLE = {"empty.avi", "random_bytes.avi", "text.mp4", "truncated_moov_at_end.mp4", "truncated_faststart.mp4",
               "no_frames.mp4"}
TINY = ["data.clip_len=4", "data.resize_short=40", "data.crop_size=32", "model.backbone=test_resnet",
        "model.hidden_size=16", "train.batch_size=4", "train.device=cpu", "logging.wandb.mode=disabled",
        "data.occlusion.prob=0.5", "model.dropout=0.3",
        "train.cpu_threads=1"]  # the automatic count follows the machine's load: a resumed run could differ from its reference


def _train(root: Path, out: Path, *extra: str, hook: dict | None = None, wait: bool = True):
    """Run tools/train.py (through the kill-hook wrapper when ``hook`` is given)."""
    args = [f"data.root={root}", f"train.output_dir={out}", *TINY, *extra]
    # One intra-op thread: a model this small gains nothing from two, and on a busy machine
    # OpenMP threads spin against other processes (measured 27x slower steps under load).
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    if hook is None:
        cmd = [sys.executable, str(REPO / "tools" / "train.py"), *args]
    else:
        cmd = [sys.executable, str(_write_hook(out.parent)), *args]
        env.update({f"KILL_{k.upper()}": str(v) for k, v in hook.items()})
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


HOOK = '''
import io, os, runpy, sys, time
mode, at, marker = os.environ["KILL_MODE"], int(os.environ["KILL_AT"]), os.environ["KILL_MARKER"]
count = [0]
def block():
    open(marker, "w").close()
    time.sleep(600)  # until SIGKILL
if mode == "save":  # the at-th torch.save writes half its bytes, fsyncs them, then blocks
    import torch
    save = torch.save
    def patched(obj, f, *args, **kwargs):
        count[0] += 1
        if count[0] == at:
            buf = io.BytesIO()
            save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            block()
        return save(obj, f, *args, **kwargs)
    torch.save = patched
if mode == "signal":  # after the at-th optimizer step this process (only rank KILL_RANK) gets KILL_SIGNAL
    import signal
    import torch
    step = torch.optim.AdamW.step
    def patched_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        count[0] += 1
        if count[0] == at and os.environ.get("RANK", "0") == os.environ.get("KILL_RANK", "0"):
            os.kill(os.getpid(), getattr(signal, os.environ["KILL_SIGNAL"]))
        return out
    torch.optim.AdamW.step = patched_step
sys.argv = [os.path.join(os.getcwd(), "tools", "train.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def _write_hook(folder: Path) -> Path:
    path = folder / "kill_hook.py"
    path.write_text(HOOK)
    return path


def _run_and_kill(root: Path, out: Path, *extra: str, mode: str, at: int) -> None:
    marker = out.parent / f"marker-{mode}-{at}"
    proc = _train(root, out, *extra, hook={"mode": mode, "at": at, "marker": marker}, wait=False)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "kill point not reached"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _history(run: Path) -> tuple[list[int], list[int]]:
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()]
    return epochs, steps


def _assert_same_weights(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert (ca["epoch"], ca["step"], ca["epoch_complete"]) == (cb["epoch"], cb["step"], cb["epoch_complete"])
    for k, v in ca["model"].items():
        # Bitwise equality is expected with num_workers=0 on one machine; 1e-6 leaves room for
        # reduction-order differences across oneDNN builds.
        torch.testing.assert_close(cb["model"][k], v, rtol=0, atol=1e-6, msg=k)


# ------------------------------------------------------------------ broken videos in training


def _add_broken(root: Path) -> list[str]:
    names = list(broken.EXPECTED)
    broken.write_corpus(root / "Grow", names)
    lists = root / "ucfTrainTestlist"
    with open(lists / "trainlist01.txt", "a") as f:
        f.writelines(f"Grow/{n} 3\n" for n in names[::2])
    with open(lists / "testlist01.txt", "a") as f:
        f.writelines(f"Grow/{n}\n" for n in names[1::2])
    return names


@pytest.mark.slow
def test_training_over_broken_videos_skips_them_and_stops_over_the_limit(tiny_dataset_copy, tmp_path):
    root = tiny_dataset_copy  # 8 classes x 4 videos (24 train, 8 test)
    names = _add_broken(root)  # 24 + 6 train, 8 + 6 test: 44 videos, 6 of them undecodable
    # Batches of 5 use all 30 training videos (no partial batch dropped), so every broken one is tried.
    ok = _train(root, tmp_path / "runs", "train.epochs=1", "data.num_workers=2", "data.max_bad_fraction=0.2",
                "train.batch_size=5", "train.name=broken")
    assert ok.returncode == 0, ok.stderr[-3000:]
    # The epoch table's last column counts the skipped videos.
    row = [line for line in ok.stdout.splitlines() if re.match(r"\s+1\s", line)]
    assert row and row[0].split()[-1] == str(len(UNDECODABLE))
    # Each is logged once, with its reason, and listed at the end.
    for name in names:
        logged = ok.stderr.count(f"skipping unreadable video {root / 'Grow' / name}:")
        assert logged == (name in UNDECODABLE), (name, logged)
    summary = [line for line in ok.stderr.splitlines() if "videos were skipped as unreadable" in line]
    assert len(summary) == 1 and f"{len(UNDECODABLE)} videos" in summary[0]
    assert all(n in summary[0] for n in UNDECODABLE)
    metrics = json.loads((tmp_path / "runs" / "broken" / "metrics.jsonl").read_text())
    assert metrics["bad_videos"] == len(UNDECODABLE) and np.isfinite(metrics["train_loss"])

    # Over the limit (0.05 * 44 = 2.2 videos) the run stops with one message listing the files.
    stop = _train(root, tmp_path / "runs", "train.epochs=1", "data.num_workers=0", "data.max_bad_fraction=0.05",
                  "train.name=strict")
    assert stop.returncode == 2
    assert "Traceback" not in stop.stderr
    err = stop.stderr[stop.stderr.index("error: "):]
    assert re.match(r"error: 3 of 44 videos failed to decode, more than data.max_bad_fraction=0.05", err)
    listed = [line.strip().split(":")[0] for line in err.splitlines()[1:]]
    assert len(listed) == 3 and all(Path(p).name in UNDECODABLE for p in listed)


def test_decode_failures_count_unique_videos(caplog):
    failures = DecodeFailures(dataset_size=10, max_fraction=0.2)
    assert failures.add([("a.avi", "empty"), ("a.avi", "empty"), ("b.avi", "bad")]) == 2
    assert failures.add([("a.avi", "empty")]) == 0
    assert [r.getMessage() for r in caplog.records].count("skipping unreadable video a.avi: empty") == 1
    failures.record([("b.avi", "bad")])  # 2 of 10 is not over 0.2
    with pytest.raises(TooManyBadVideos, match=r"3 of 10 videos failed(.|\n)*  c.avi: gone"):
        failures.record([("c.avi", "gone")])


def test_train_item_gives_up_after_too_many_bad_substitutes(tmp_path):
    broken.write_corpus(tmp_path, ["empty.avi", "text.mp4"])
    samples = [type("S", (), {"path": tmp_path / n, "label": 0})() for n in ["empty.avi", "text.mp4"]]
    ds = VideoClipDataset(samples, sampling=ClipSampling(clip_len=4), train=True, max_retries=3,
                          transforms=[train_transform(resize_short=40, crop_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)])
    with pytest.raises(TooManyBadVideos, match="4 videos in a row failed to decode") as e:
        ds[0]
    assert "empty file" in str(e.value) or "Invalid data" in str(e.value)
    # In eval the item is reported and left out instead.
    ev = VideoClipDataset(samples, sampling=ClipSampling(clip_len=4), train=False,
                          transforms=[eval_transform(resize_short=40, crop_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)])
    item = ev[1]
    assert item["clip"] is None and item["failed"][0][0] == str(tmp_path / "text.mp4")


# ------------------------------------------------------------------ hung and crashing decoders


def _hang_or_crash(self, index, rng):
    path = self.paths[index]
    if path.endswith(os.environ.get("ACTIONREC_TEST_BAD", "-")):
        self.decode_table.start(path)
        if os.environ["ACTIONREC_TEST_HOW"] == "hang":
            time.sleep(120)
        os.kill(os.getpid(), signal.SIGSEGV)
    return _ORIGINAL_LOAD(self, index, rng)


_ORIGINAL_LOAD = VideoClipDataset.load


@pytest.mark.parametrize("how", ["hang", "crash"])
def test_loader_names_the_file_a_worker_hangs_or_dies_on(tiny_dataset, monkeypatch, how):
    split = load_split(tiny_dataset)
    bad = split.train[5].path
    monkeypatch.setenv("ACTIONREC_TEST_BAD", str(bad))
    monkeypatch.setenv("ACTIONREC_TEST_HOW", how)
    monkeypatch.setattr(VideoClipDataset, "load", _hang_or_crash)  # workers are forked: they see it
    ds = VideoClipDataset(split.train, sampling=ClipSampling(clip_len=4), train=True,
                          transforms=[train_transform(resize_short=40, crop_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)])
    loader = build_loader(ds, batch_size=2, train=True, num_workers=2, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(LoaderStalled) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    assert f"{bad} (for" in msg and "check_videos.py" in msg
    assert issubclass(LoaderStalled, user_errors())  # the tools print it as one line, no traceback
    if how == "hang":
        assert msg.startswith("no batch within data.loader_timeout=2 s") and time.monotonic() - t0 < 60
    else:
        assert msg.startswith("a data loader worker died")
        assert msg.count(" (for ") == 1  # only the dead worker's file, not the healthy one's


# ------------------------------------------------------------------ SIGKILL and resume


@pytest.mark.slow
def test_sigkill_inside_a_mid_epoch_save_then_resume_matches_uninterrupted_run(tiny_dataset, tmp_path):
    common = ["train.epochs=2", "train.save_every_steps=2", "train.log_every=1", "train.deterministic=true",
              "data.num_workers=0"]  # 6 steps per epoch
    ref = _train(tiny_dataset, tmp_path / "runs", *common, "train.name=ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_epochs, ref_steps = _history(tmp_path / "runs" / "ref")
    assert ref_epochs == [1, 2] and ref_steps == list(range(1, 13))

    # torch.save calls: steps 2 and 4, epoch 1 (last.pt, best.pt; no step-6 save, the epoch-end
    # one follows it), step 8, then step 10: killed half-way through writing it, mid-epoch 2.
    run = tmp_path / "runs" / "killed"
    _run_and_kill(tiny_dataset, tmp_path / "runs", *common, "train.name=killed", mode="save", at=6)
    temps = list(run.glob(".last.pt.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0
    with pytest.raises(CheckpointError):
        load_checkpoint(temps[0])  # the half-written file really is unloadable...
    last = load_checkpoint(run / "last.pt")  # ...and last.pt is the previous, complete checkpoint
    assert (last["epoch"], last["epoch_complete"], last["extra"]["batches_done"], last["step"]) == (1, False, 2, 8)
    assert _history(run) == ([1], list(range(1, 11)))  # steps 9 and 10 ran after that save

    resumed = _train(tiny_dataset, tmp_path / "runs", *common, "train.name=killed", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 2, batch 2, step 8" in resumed.stderr  # the "resumed from" line
    assert "left by a run killed while saving" in resumed.stderr and not list(run.glob(".*.tmp"))
    assert _history(run) == (ref_epochs, ref_steps)  # no gap, no duplicate
    _assert_same_weights(tmp_path / "runs" / "ref" / "last.pt", run / "last.pt")
    ref_loss = [json.loads(x)["train/loss"] for x in (tmp_path / "runs" / "ref" / "steps.jsonl").read_text().splitlines()]
    got_loss = [json.loads(x)["train/loss"] for x in (run / "steps.jsonl").read_text().splitlines()]
    assert got_loss == pytest.approx(ref_loss, abs=1e-6)


def _preempted_run(root: Path, out: Path, sig: str, *common: str) -> Path:
    run = out / "pre"
    hook = {"mode": "signal", "at": 3, "marker": out / "unused", "signal": sig}
    stopped = _train(root, out, *common, "train.name=pre", hook=hook)
    assert stopped.returncode == 75, stopped.stderr[-3000:]  # PREEMPTED_EXIT
    # The signal came during step 3's optimizer update; the step in progress (4) finishes, then it stops.
    assert f"{sig} received: stopped after step 4 (epoch 1, batch 4)" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    last = load_checkpoint(run / "last.pt")
    assert (last["epoch"], last["epoch_complete"], last["extra"]["batches_done"], last["step"]) == (0, False, 4, 4)
    assert not list(run.glob(".*.tmp"))
    return run


@pytest.mark.slow
def test_sigusr1_stops_like_sigterm(tiny_dataset, tmp_path):
    _preempted_run(tiny_dataset, tmp_path / "runs", "SIGUSR1", "train.epochs=2", "data.num_workers=0")


@pytest.mark.slow
def test_preemption_signal_checkpoints_mid_epoch_and_resume_matches_uninterrupted_run(tiny_dataset, tmp_path):
    """What SLURM and Kubernetes send before they preempt a job: the run stops cleanly and resumes."""
    common = ["train.epochs=2", "train.log_every=1", "train.deterministic=true", "data.num_workers=0"]  # 6 steps/epoch
    ref = _train(tiny_dataset, tmp_path / "runs", *common, "train.name=ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = _preempted_run(tiny_dataset, tmp_path / "runs", "SIGTERM", *common)
    resumed = _train(tiny_dataset, tmp_path / "runs", *common, "train.name=pre", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 1, batch 4, step 4" in resumed.stderr
    assert _history(run) == _history(tmp_path / "runs" / "ref")
    _assert_same_weights(tmp_path / "runs" / "ref" / "last.pt", run / "last.pt")


@pytest.mark.slow
def test_preemption_under_torchrun_stops_every_rank_at_the_same_step(tiny_dataset, tmp_path):
    """SIGTERM reaches only rank 1; the per-step all-reduce carries it, so rank 0 stops at the same step."""
    out = tmp_path / "runs"
    hook = _write_hook(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_MODE": "signal", "KILL_AT": "2", "KILL_MARKER": "x",
           "KILL_SIGNAL": "SIGTERM", "KILL_RANK": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(hook),
           f"data.root={tiny_dataset}", f"train.output_dir={out}", *TINY, "train.epochs=2", "train.log_every=1",
           "data.num_workers=0", "train.name=ddp", "train.batch_size=2"]  # 6 steps per epoch on 2 ranks
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert "stopped after step 3 (epoch 1, batch 3)" in text, text[-4000:]  # logged by rank 0
    # No worker traceback (torchrun prints its own for the non-zero exits: ChildFailedError).
    assert not [t for t in text.split("Traceback (most recent call last):")[1:] if "ChildFailedError" not in t]
    # Both workers exit with PREEMPTED_EXIT; torchrun itself reports them as failed (status 1).
    assert proc.returncode != 0 and "exitcode  : 75" in text, text[-3000:]
    assert "another rank's stop request received: stopped after step 3" in text  # rank 0 learnt it in the all-reduce
    last = load_checkpoint(out / "ddp" / "last.pt")
    assert (last["epoch"], last["epoch_complete"], last["extra"]["batches_done"], last["step"]) == (0, False, 3, 3)


def test_atomic_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(2)}}, path)

    def failing_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"last.pt: cannot write the checkpoint \(disk full\).*previous last.pt is unchanged"):
        atomic_save({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_saver_removes_stale_temp_files_only(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".best.pt.x.tmp").write_bytes(b"half")
    (tmp_path / "last.pt").write_bytes(b"keep")
    (tmp_path / "notes.tmp").write_bytes(b"keep")
    removed = CheckpointSaver(tmp_path).remove_stale_temp_files()
    assert sorted(p.name for p in removed) == [".best.pt.x.tmp", ".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


# ------------------------------------------------------------------ hostile checkpoints


class _Payload:
    """Unpickling this calls Path.touch(marker): code execution, made visible."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file whose unpickling would create ``marker``."""
    torch.save({"model": {"w": torch.zeros(1)}, "config": {}, "extra": _Payload(marker)}, path)
    return path


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    # The payload is live: an unsafe load runs it.
    control = tmp_path / "control-ran"
    torch.load(write_malicious_checkpoint(tmp_path / "control.pt", control), weights_only=False)
    assert control.exists()

    marker = tmp_path / "payload-ran"
    path = write_malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(e.value)
    assert msg.startswith(f"{path}: refused: it holds code objects") and "nothing in it was run" in msg
    assert "\n" not in msg


def test_truncated_and_foreign_checkpoints_are_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, good)
    half = tmp_path / "half.pt"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(half)
    other = tmp_path / "other.pt"
    buf = io.BytesIO()
    torch.save({"state_dict": {}}, buf)
    other.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not an actionrec checkpoint"):
        load_checkpoint(other)
