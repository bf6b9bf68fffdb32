"""The server's parts without a server: dynamic batching, the hang-proof worker pool, upload decoding."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actionrec import build
from actionrec.data.video_io import VideoReader
from actionrec.deploy.batching import DynamicBatcher
from actionrec.deploy.service import finish_answer, load_served_model, plan_answer, streaming_classifier
from actionrec.deploy.uploads import DecodeJob, decode_upload
from actionrec.deploy.workers import WorkerPool
from tests.tools.deploy_helpers import REPO, deploy_dataset, write_test_video, write_tiny_checkpoint  # noqa: F401


# Batch-1 passes are tiny: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder:
    """A batch function that doubles its rows and records every call's size and key."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[object, int]] = []
        self.delay = delay

    def __call__(self, key, x):
        self.calls.append((key, len(x)))
        time.sleep(self.delay)
        return x * 2


def test_concurrent_requests_share_batches_and_get_their_own_rows_back():
    fn = Recorder(delay=0.02)
    b = DynamicBatcher(fn, max_batch=8, max_wait_ms=50)
    results, start = {}, threading.Barrier(6)

    def client(i):
        start.wait()
        x = np.full((3, 2), i, np.float32) + np.arange(3, dtype=np.float32)[:, None]
        results[i] = (x, b.submit(x).result(timeout=10))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    for x, y in results.values():
        np.testing.assert_array_equal(y, x * 2)  # each request its own rows, in order
    sizes = [n for _, n in fn.calls]
    assert sum(sizes) == 18 and max(sizes) <= 8
    assert len(sizes) <= 4  # 18 rows in batches of up to 8, not 6 calls of 3
    s = b.snapshot()["cnn"]
    assert s["multi_request_batches"] >= 1 and s["most_requests_in_a_batch"] >= 2 and s["largest_batch"] == 8


def test_lone_request_waits_at_most_max_wait_and_a_full_batch_not_at_all():
    b = DynamicBatcher(Recorder(), max_batch=4, max_wait_ms=150)
    t0 = time.monotonic()
    b.submit(np.zeros((1, 2))).result(timeout=5)
    lone = time.monotonic() - t0
    t0 = time.monotonic()
    b.submit(np.zeros((4, 2))).result(timeout=5)
    full = time.monotonic() - t0
    t0 = time.monotonic()
    b.submit(np.zeros((1, 2)), since=time.monotonic() - 1.0).result(timeout=5)  # a later stage of an old request
    later_stage = time.monotonic() - t0
    b.close()
    assert 0.14 <= lone < 0.6
    assert full < 0.1 and later_stage < 0.1


def test_big_jobs_are_split_keys_never_mix_and_errors_reach_only_their_requests():
    def fn(key, x):
        if key == "bad":
            raise ValueError("broken model part")
        calls.append((key, len(x)))
        return x + (100 if key == "cnn" else 200)

    calls = []
    b = DynamicBatcher(fn, max_batch=4, max_wait_ms=1)
    x = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(b.submit(x).result(timeout=5), x + 100)
    assert [n for _, n in calls] == [4, 4, 2]
    with pytest.raises(ValueError, match="broken model part"):
        b.submit(x, "bad").result(timeout=5)
    head = b.submit(np.ones((2, 3, 5)), ("head", 3))
    cnn = b.submit(np.ones((2, 1)), "cnn")
    np.testing.assert_array_equal(head.result(timeout=5), np.full((2, 3, 5), 201.0))
    np.testing.assert_array_equal(cnn.result(timeout=5), np.full((2, 1), 101.0))
    assert b.call(lambda a, k: a + k, 1, k=2).result(timeout=5) == 3  # serial jobs on the same thread
    b.close()
    assert set(b.snapshot()) >= {"cnn", "head"}


def test_max_batch_one_is_one_row_per_call():
    fn = Recorder()
    b = DynamicBatcher(fn, max_batch=1, max_wait_ms=0)
    futs = [b.submit(np.zeros((5, 1))) for _ in range(3)]
    for f in futs:
        f.result(timeout=5)
    b.close()
    assert [n for _, n in fn.calls] == [1] * 15


def test_worker_pool_survives_hangs_crashes_and_exceptions():
    # eval is a picklable builtin: each job is an expression run in a worker process.
    pool = WorkerPool(eval, workers=1, timeout=2.0, warmup="__import__('os').getpid()")
    try:
        assert pool.wait_ready(60)
        pid = pool.submit("__import__('os').getpid()").result(timeout=60).value
        hang = pool.submit("__import__('time').sleep(60)").result(timeout=60)
        assert hang.error == "timed out after 2 s" and 1.9 < hang.seconds < 10
        crash = pool.submit("__import__('os').kill(__import__('os').getpid(), 11)").result(timeout=60)
        assert crash.error == "worker killed by SIGSEGV"  # after its one retry in a fresh worker
        err = pool.submit("int('not a number')").result(timeout=60)
        assert err.error.startswith("ValueError: invalid literal")
        after = pool.submit("__import__('os').getpid()").result(timeout=60)
        assert after.error is None and after.value != pid  # a fresh process after the kill
        assert pool.submit("6 * 7").result(timeout=60).value == 42
        assert pool.stats["timeouts"] == 1 and pool.stats["crashes"] == 2 and pool.stats["restarts"] == 3
        pool._slots[0].proc.kill()  # an idle worker killed from outside (the OOM killer, an operator)
        pool._slots[0].proc.join()
        again = pool.submit("__import__('os').getpid()").result(timeout=60)
        assert again.error is None and again.value != after.value and pool.stats["restarts"] == 4
    finally:
        pool.close()


def test_worker_pool_reruns_a_job_whose_worker_was_killed_from_outside():
    # The job sleeps, then answers its process id; the worker is killed mid-job by someone else.
    # The job is not to blame: it runs again in a fresh worker and succeeds.
    pool = WorkerPool(eval, workers=1, timeout=60.0, warmup="0")
    try:
        assert pool.wait_ready(60)
        victim = pool._slots[0].proc
        fut = pool.submit("__import__('time').sleep(1.0) or __import__('os').getpid()")
        deadline = time.monotonic() + 30
        while pool._slots[0].future is None and time.monotonic() < deadline:  # wait until the job is in the worker
            time.sleep(0.01)
        victim.kill()
        res = fut.result(timeout=60)
        assert res.error is None and res.value != victim.pid
        assert pool.stats["crashes"] == 1 and pool.stats["restarts"] == 1 and pool.stats["jobs"] == 1
    finally:
        pool.close()


# ------------------------------------------------------------------------------------------------
# decoding an upload (the worker function, run in-process here)


def _broken_corpus(folder: Path, names: list[str]) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("broken_videos", REPO / "tests" / "data" / "broken_videos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.write_corpus(folder, names)
    return {n: folder / n for n in names}


@pytest.fixture(scope="module")
def served(deploy_dataset, tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("runs") / "best.pt", deploy_dataset)
    return load_served_model(ckpt)


def _job(path, **kw) -> DecodeJob:
    return DecodeJob(**{"path": str(path), "num_clips": 10, "num_crops": 1, "frame_step": 1, "max_seconds": 60,
                        "max_frames": 7200, **kw})


@pytest.mark.parametrize("num_crops", [1, 3])
def test_decoded_views_are_the_eval_datasets_views_and_timeline_the_demo_frames(served, tmp_path, num_crops):
    video = write_test_video(tmp_path / "grow.mp4", num_frames=22)
    out = decode_upload(served.spec, _job(video, num_crops=num_crops, frame_step=2))
    cfg = served.spec.config
    ds = build.eval_dataset(cfg, [type("S", (), {"path": video, "label": 0})()], num_clips=10, num_crops=num_crops)
    expected = ds.load(0, np.random.default_rng(0)).numpy()  # (V, T, 3, S, S): what tools/eval.py feeds the model
    assert out["view_rows"].shape == (10 * num_crops, 4)
    np.testing.assert_array_equal(out["rows"][out["view_rows"]], expected)
    assert len(out["rows"]) < 10 * num_crops * 4  # shared frames are preprocessed once
    assert out["timeline_frames"] == list(range(0, 22, 2))
    frame_tf = build.eval_transforms_from(cfg.data)[0].frame  # the demo's preprocessing
    with VideoReader(video) as r:
        raw = r.get_frames(out["timeline_frames"])
    np.testing.assert_array_equal(out["rows"][out["timeline_rows"]], np.stack([frame_tf(f).numpy() for f in raw]))
    assert (out["frames"], out["fps"], out["width"], out["height"]) == (22, 25.0, 64, 48)


def test_bad_files_come_back_as_statuses_without_the_server_path(served, tmp_path):
    files = _broken_corpus(tmp_path, ["text.mp4", "truncated_faststart.mp4", "truncated_xvid.avi", "no_frames.mp4"])
    for name, (status, words) in {"text.mp4": (422, "not a video"), "truncated_faststart.mp4": (422, "truncated"),
                                  "truncated_xvid.avi": (422, "truncated"),
                                  "no_frames.mp4": (422, "no decodable frames")}.items():
        out = decode_upload(served.spec, _job(files[name]))
        assert out["status"] == status and words in out["error"], (name, out)
        assert out["error"].startswith("{name}: ") and str(tmp_path) not in out["error"]
    long = write_test_video(tmp_path / "long.mp4", num_frames=30)
    out = decode_upload(served.spec, _job(long, max_seconds=1.0))
    assert out == {"status": 413, "error": "{name}: video is 1.2 s long; this server takes at most 1 s (--max-seconds)"}


def test_batched_timeline_equals_the_demo_classifier_frame_by_frame(served, tmp_path):
    """Two-pass timeline with batched heads == StreamingClassifier calling the head per window."""
    video = write_test_video(tmp_path / "grow.mp4", num_frames=22)
    decoded = decode_upload(served.spec, _job(video))
    feats = served.backend.features_batch(decoded["rows"])
    opts = dict(topk=3, stride=2, smooth=3, frame_step=1)
    plan = plan_answer(served, feats, decoded, **opts)
    logits = [served.backend.head_batch(s[None])[0] for s in plan.seqs]
    answer = finish_answer(served, plan, logits, decoded)
    demo = streaming_classifier(served, **opts)  # head called per window, as tools/demo.py does
    preds = [p for f, i in zip(feats[decoded["timeline_rows"]], decoded["timeline_frames"])
             if (p := demo.push(f, i)) is not None]
    assert [e["frame"] for e in answer["timeline"]] == [p.frame for p in preds] == list(range(1, 22, 2))
    for entry, pred in zip(answer["timeline"], preds):
        assert [c["label"] for c in entry["top"]] == [n for n, _ in pred.topk]
        np.testing.assert_allclose([c["score"] for c in entry["top"]], [p for _, p in pred.topk], atol=2e-6)


def test_worker_pool_retries_only_in_a_process_started_after_the_crash():
    # Both workers are doomed (as when both were killed together and still look alive): the job dies
    # in whichever of them runs it. Its retry must wait for the replacement, not take the other one.
    pool = WorkerPool(eval, workers=2, timeout=60.0, warmup="0")
    try:
        assert pool.wait_ready(60)
        doomed = {s.proc.pid for s in pool._slots}
        os_ = "__import__('os')"
        res = pool.submit(f"{os_}.kill({os_}.getpid(), 9) if {os_}.getpid() in {doomed} else {os_}.getpid()").result(timeout=60)
        assert res.error is None and res.value not in doomed
        assert pool.stats["crashes"] == 1 and pool.stats["jobs"] == 1
    finally:
        pool.close()


def test_worker_pool_close_fails_a_job_waiting_for_its_retry(tmp_path):
    # The job kills its worker; its retry waits for the fresh worker's warm-up, which is slow once
    # the marker exists. Closing the pool then fails the waiting job cleanly.
    marker = tmp_path / "slow"
    pool = WorkerPool(eval, workers=1, timeout=60.0,
                      warmup=f"__import__('time').sleep(30) if __import__('os').path.exists({str(marker)!r}) else 0")
    try:
        assert pool.wait_ready(60)
        marker.touch()
        fut = pool.submit("__import__('os').kill(__import__('os').getpid(), 9)")
        deadline = time.monotonic() + 30
        while pool.stats["crashes"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.stats["crashes"] == 1 and not fut.done()  # waiting for its retry
    finally:
        pool.close()
    with pytest.raises(RuntimeError, match="worker pool closed"):
        fut.result(timeout=10)
