"""tools/demo.py: headless runs on a generated video, the webcam path with a fake camera, errors."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from actionrec.deploy import sources
from actionrec.engine.checkpoint import latest_checkpoint
from tests.tools.deploy_helpers import count_frames, deploy_dataset, load_tool, write_test_video, write_tiny_checkpoint  # noqa: F401


# Batch-1 passes are tiny: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo():
    return load_tool("demo")


@pytest.fixture(scope="module")
def ckpt(deploy_dataset, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("runs") / "tiny" / "best.pt", deploy_dataset)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("video") / "grow.mp4", num_frames=22)


def test_headless_run_writes_annotated_video_and_complete_timeline(demo, ckpt, video, tmp_path):
    out, timeline = tmp_path / "annotated.mp4", tmp_path / "preds.json"
    res = demo.cli([str(video), "--checkpoint", str(ckpt), "--no-show", "--output", str(out), "--json", str(timeline),
                    "--frame-step", "2"])
    # 22 frames; every 2nd is sampled (11 through the CNN); the head runs every demo.stride=2 sampled frames.
    assert count_frames(out) == (22, (64, 48))  # playable, every frame written, source size
    saved = json.loads(timeline.read_text())
    assert saved == json.loads(json.dumps(res))
    assert (saved["frames"], saved["frames_encoded"], saved["dropped"], saved["live"]) == (22, 11, 0, False)
    assert saved["batch"] == 16 and saved["threads"] >= 1  # a file without a window: throughput mode
    assert (saved["clip_len"], saved["stride"], saved["smooth"], saved["topk"], saved["frame_step"]) == (4, 2, 3, 3, 2)
    preds = saved["predictions"]
    assert [p["frame"] for p in preds] == [2, 6, 10, 14, 18]  # 2nd, 4th, ... sampled frame (indices 0, 2, 4, ...)
    assert [p["window_len"] for p in preds] == [2, 4, 4, 4, 4]  # partial window before the buffer is full
    assert [p["window_start"] for p in preds] == [0, 0, 4, 8, 12]
    assert [p["time"] for p in preds] == pytest.approx([f / 25.0 for f in [2, 6, 10, 14, 18]])
    for p in preds:
        assert len(p["topk"]) == 3 and {t["label"] for t in p["topk"]} <= set(saved["class_names"])
        probs = [t["prob"] for t in p["topk"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


@pytest.mark.parametrize("frame_step", [1, 3])
def test_batched_frames_give_the_predictions_of_frame_at_a_time(demo, ckpt, video, frame_step):
    args = [str(video), "--checkpoint", str(ckpt), "--no-show", "--frame-step", str(frame_step), "--threads", "1"]
    one = demo.cli([*args, "--batch", "1"])
    many = demo.cli([*args, "--batch", "3"])  # 22 frames: chunks of 3 sampled frames and a partial last one
    assert (one["batch"], many["batch"], many["frames_encoded"]) == (1, 3, one["frames_encoded"])
    assert len(one["predictions"]) == len(many["predictions"]) > 2
    for a, b in zip(one["predictions"], many["predictions"], strict=True):
        assert {k: v for k, v in a.items() if k != "topk"} == {k: v for k, v in b.items() if k != "topk"}
        assert [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
        assert [t["prob"] for t in a["topk"]] == pytest.approx([t["prob"] for t in b["topk"]], abs=1e-4)


def test_overlay_is_drawn_on_the_output_frames(demo, ckpt, tmp_path):
    import cv2

    video = write_test_video(tmp_path / "big.mp4", num_frames=8, width=320, height=240)
    out = tmp_path / "a.mp4"
    demo.cli([str(video), "--checkpoint", str(ckpt), "--no-show", "--output", str(out), "--max-frames", "6"])
    cap, plain = cv2.VideoCapture(str(out)), cv2.VideoCapture(str(video))
    frames = [(cap.read()[1], plain.read()[1]) for _ in range(6)]
    assert count_frames(out)[0] == 6  # --max-frames stops early
    top_left = [np.abs(a[:40, :60].astype(int) - b[:40, :60].astype(int)).mean() for a, b in frames]
    bottom_right = [np.abs(a[-100:, -150:].astype(int) - b[-100:, -150:].astype(int)).mean() for a, b in frames]
    assert min(top_left) > 10 and max(bottom_right) < 10  # text box drawn top-left, rest of the frame intact


def test_default_checkpoint_is_the_newest_best_under_runs(demo, ckpt, video, tmp_path, deploy_dataset):
    older = write_tiny_checkpoint(tmp_path / "runs" / "a" / "best.pt", deploy_dataset)
    newer = write_tiny_checkpoint(tmp_path / "runs" / "b" / "nested" / "best.pt", deploy_dataset, seed=1)
    (tmp_path / "runs" / "c").mkdir()
    (tmp_path / "runs" / "c" / "last.pt").write_bytes(b"")  # last.pt is not a candidate
    os.utime(older, (time.time() - 100, time.time() - 100))
    assert latest_checkpoint(tmp_path / "runs") == newer
    res = demo.cli([str(video), "--runs", str(tmp_path / "runs"), "--no-show", "--max-frames", "2"])
    assert res["model"] == str(newer)


def test_webcam_path_with_a_fake_camera_drops_frames_when_inference_is_slower(demo, ckpt, monkeypatch, tmp_path):
    class FakeCamera:
        """25 ms per frame, like a 40 fps camera; pixel value encodes the frame number."""

        def __init__(self, index):
            self.index, self.n = index, 0

        def isOpened(self):
            return True

        def read(self):
            if self.n >= 60:
                return False, None
            time.sleep(0.025)
            self.n += 1
            return True, np.full((48, 64, 3), self.n * 4 % 256, np.uint8)

        def get(self, prop):
            return 40.0

        def release(self):
            pass

    monkeypatch.setattr(sources.cv2, "VideoCapture", FakeCamera)
    demo_backend = demo.TorchBackend
    slow = type("Slow", (demo_backend,), {"features": lambda self, rgb: (time.sleep(0.06), demo_backend.features(self, rgb))[1]})
    monkeypatch.setattr(demo, "TorchBackend", slow)  # inference slower than the camera
    res = demo.cli(["--webcam", "0", "--checkpoint", str(ckpt), "--no-show", "--json", str(tmp_path / "cam.json")])
    assert res["live"] and res["source"] == "camera 0" and res["batch"] == 1  # a camera: latency mode
    assert 5 <= res["frames"] < 45 and res["dropped"] > 10  # dropped, not queued behind
    assert res["frames"] + res["dropped"] == 60  # every captured frame was either processed or dropped
    frames = [p["frame"] for p in res["predictions"]]
    assert frames == sorted(frames) and len(frames) == res["frames_encoded"] // 2
    assert all(p["time"] >= 0 for p in res["predictions"])


def _error(demo, capfd, argv) -> str:
    with pytest.raises(SystemExit) as e:
        demo.cli(argv)
    assert e.value.code == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err  # one line, native noise included
    return err


def test_clear_one_line_errors(demo, ckpt, video, tmp_path, capfd):
    ck = ["--checkpoint", str(ckpt), "--no-show"]
    assert "video not found" in _error(demo, capfd, [str(tmp_path / "nope.mp4"), *ck])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    assert "not a video OpenCV can decode" in _error(demo, capfd, [str(text), *ck])
    assert "not a file" in _error(demo, capfd, [str(tmp_path), *ck])
    assert "camera 7: no camera at this index" in _error(demo, capfd, ["7", *ck])
    assert "checkpoint not found" in _error(demo, capfd, [str(video), "--checkpoint", str(tmp_path / "x.pt")])
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    assert "unreadable or truncated" in _error(demo, capfd, [str(video), "--checkpoint", str(truncated)])
    wrong = torch.load(ckpt, weights_only=True)
    wrong["config"]["model"]["hidden_size"] = 32  # weights were trained with 16
    torch.save(wrong, tmp_path / "wrong.pt")
    assert "incompatible checkpoint" in _error(demo, capfd, [str(video), "--checkpoint", str(tmp_path / "wrong.pt")])
    assert "no best.pt under" in _error(demo, capfd, [str(video), "--runs", str(tmp_path / "empty")])
    assert "no model.json" in _error(demo, capfd, [str(video), "--onnx", str(tmp_path)])


def test_explain_blends_the_heatmap_into_the_model_view_only(demo, ckpt, tmp_path, capfd):
    import cv2

    video = write_test_video(tmp_path / "big.mp4", num_frames=8, width=320, height=240)
    plain, heat = tmp_path / "plain.mp4", tmp_path / "heat.mp4"
    ref = demo.cli([str(video), "--checkpoint", str(ckpt), "--no-show", "--output", str(plain)])
    res = demo.cli([str(video), "--checkpoint", str(ckpt), "--no-show", "--output", str(heat), "--explain"])
    assert res["explain"] and not ref["explain"] and count_frames(heat) == (8, (320, 240))
    # Same labels: the explaining backend computes the same features, with gradients kept.
    for a, b in zip(ref["predictions"], res["predictions"], strict=True):
        assert [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
        assert [t["prob"] for t in a["topk"]] == pytest.approx([t["prob"] for t in b["topk"]], abs=1e-4)
    a, b = cv2.VideoCapture(str(plain)), cv2.VideoCapture(str(heat))
    diffs = [np.abs(a.read()[1].astype(int) - b.read()[1].astype(int)) for _ in range(8)]
    # The model sees the centre crop (short side 240 -> 40, crop 32: source box x 60-252, y 24-216);
    # the heatmap covers exactly that, below the text box (top-left, ~64 px high) and nowhere else.
    inside = [d[70:210, 70:245].mean() for d in diffs]
    outside = [max(d[70:, :44].mean(), d[70:, 268:].mean(), d[220:, :].mean()) for d in diffs]
    assert min(inside) > 5 and max(outside) < 3, (inside, outside)
    with pytest.raises(SystemExit):
        demo.cli([str(video), "--onnx", str(tmp_path), "--explain", "--no-show"])
    assert "--explain needs the torch fp32 model" in capfd.readouterr().err
