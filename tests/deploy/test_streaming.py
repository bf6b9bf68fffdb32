"""Streaming classifier, frame preprocessing and newest-frame capture (actionrec/deploy)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from actionrec.data.transforms import eval_transform
from actionrec.data.video_io import VideoReader
from actionrec.deploy.backends import FramePreprocessor, TorchBackend
from actionrec.deploy.sources import LatestFrameSource, open_source
from actionrec.deploy.streaming import StreamingClassifier, iter_frames, softmax
from actionrec.models.factory import create_model
from tests.tools.deploy_helpers import write_test_video

# Batch-1 passes are tiny: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


PRE = dict(resize_short=40, crop_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class RecordingBackend:
    """Feature of a frame = its pixel value; the head's logits encode the window it was given."""

    def __init__(self, num_classes: int = 3):
        self.frames_encoded, self.seen, self.windows, self.k = 0, [], [], num_classes

    def features(self, rgb):
        self.frames_encoded += 1
        self.seen.append(int(rgb[0, 0, 0]))
        return np.array([rgb[0, 0, 0], 1.0], np.float32)

    def head(self, feats):
        self.windows.append(feats[:, 0].astype(int).tolist())
        return np.arange(self.k, dtype=np.float32) * (len(self.windows) % 2)  # alternating windows


def frame(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, np.uint8)


def test_ring_buffer_each_frame_encoded_once_head_every_stride_sampled_frames():
    be = RecordingBackend()
    clf = StreamingClassifier(be, ["a", "b", "c"], clip_len=4, stride=3, smooth=2, topk=2)
    preds = [p for i in range(14) if (p := clf.push(frame(i), i)) is not None]
    assert be.seen == list(range(14))  # every frame through the "CNN" exactly once, in order
    assert [p.frame for p in preds] == [2, 5, 8, 11]  # after 3, 6, 9, 12 frames
    assert [p.window for p in preds] == [[0, 1, 2], [2, 3, 4, 5], [5, 6, 7, 8], [8, 9, 10, 11]]  # partial, then the last T
    assert be.windows == [p.window for p in preds]  # the head saw the features of exactly those frames, oldest first
    # Window probabilities alternate uniform / ramp; the shown probabilities average the last 2.
    ramp, flat = softmax(np.arange(3, dtype=np.float32)), np.full(3, 1 / 3, np.float32)
    np.testing.assert_allclose(preds[0].window_probs, ramp, atol=1e-6)
    np.testing.assert_allclose(preds[0].probs, ramp, atol=1e-6)
    np.testing.assert_allclose(preds[1].probs, (ramp + flat) / 2, atol=1e-6)
    np.testing.assert_allclose(preds[3].probs, (ramp + flat) / 2, atol=1e-6)
    assert [name for name, _ in preds[0].topk] == ["c", "b"]
    assert preds[1].to_json(0.2) == {"frame": 5, "time": 0.2, "window_start": 2, "window_len": 4,
                                     "topk": [{"label": "c", "prob": round(float(preds[1].probs[2]), 5)},
                                              {"label": "b", "prob": round(float(preds[1].probs[1]), 5)}]}


def test_frame_step_samples_by_source_index_and_tolerates_gaps():
    be = RecordingBackend()
    clf = StreamingClassifier(be, ["a", "b", "c"], clip_len=3, stride=2, smooth=1, frame_step=3)
    # A live source skips indices (dropped frames): 0..6 then 9, 10, 11, 15.
    indices = [0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 15]
    preds = [p for i in indices if (p := clf.push(frame(i), i)) is not None]
    assert be.seen == [0, 3, 6, 9, 15]  # at least 3 source frames apart; skipped ones never reach the CNN
    assert [p.window for p in preds] == [[0, 3], [3, 6, 9]]
    assert clf.num_sampled == 5 and not clf.wants(16) and clf.wants(18)


def test_preprocessor_matches_the_eval_transform():
    rng = np.random.default_rng(0)
    tf = eval_transform(**PRE)
    pre = FramePreprocessor(**PRE)
    for h, w in [(48, 64), (120, 160), (97, 55), (40, 40), (31, 300)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = tf.frame(img).numpy()
        got = pre(img)
        assert got.shape == ref.shape == (3, 32, 32) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_partial_window_equals_padded_window_with_lengths():
    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=5, backbone="test_resnet", hidden_size=16).eval()
    feats = torch.randn(1, 6, model.feature_dim)
    for n in (1, 3, 6):
        padded = torch.cat([feats[:, :n], torch.zeros(1, 6 - n, model.feature_dim)], 1)
        with torch.no_grad():
            a = model.forward_head(feats[:, :n])
            b = model.forward_head(padded, torch.tensor([n]))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("frame_step", [1, 2])
def test_streaming_windows_equal_offline_clip_predictions(tmp_path, frame_step):
    """Each full streaming window == the whole model run offline on a clip of the same frames."""
    video = write_test_video(tmp_path / "grow.mp4", num_frames=22)
    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=8, backbone="test_resnet", hidden_size=16).eval()
    with torch.no_grad():
        model.head.fc.weight.mul_(20.0)  # spread the scores: a near-uniform softmax would hide mismatches
    tf = eval_transform(**PRE)
    backend = TorchBackend(model, tf.frame)
    clf = StreamingClassifier(backend, [str(i) for i in range(8)], clip_len=4, stride=1, smooth=1, frame_step=frame_step)
    source = open_source(str(video))
    preds = [p for i, f in iter_frames(source) if (p := clf.push(f[:, :, ::-1].copy(), i)) is not None]
    source.release()
    assert backend.frames_encoded == len(range(0, 22, frame_step))  # no frame through the CNN twice
    full = [p for p in preds if len(p.window) == 4]
    assert len(full) == len(range(0, 22, frame_step)) - 3
    with VideoReader(video, backend="opencv") as reader:  # same decoder (FFmpeg via OpenCV) as the stream
        for p in full:
            assert p.window == list(range(p.frame - 3 * frame_step, p.frame + 1, frame_step))
            clip = tf(reader.get_frames(p.window))[None]  # (1, T, C, H, W)
            with torch.no_grad():
                offline = torch.softmax(model(clip), 1)[0].numpy()
            np.testing.assert_allclose(p.window_probs, offline, atol=1e-4, rtol=0)
    assert max(np.abs(p.window_probs - full[0].window_probs).max() for p in full) > 1e-3  # windows do differ


class FakeCamera:
    """A capture that produces numbered frames (pixel value = index % 256) every ``period`` seconds."""

    def __init__(self, num_frames: int, period: float):
        self.num_frames, self.period, self.produced, self.released = num_frames, period, 0, False

    def read(self):
        if self.produced >= self.num_frames:
            return False, None
        time.sleep(self.period)
        img = np.full((8, 8, 3), self.produced % 256, np.uint8)
        self.produced += 1
        return True, img

    def get(self, prop):
        return 1 / self.period

    def release(self):
        self.released = True


def test_latest_frame_source_drops_stale_frames_instead_of_queueing():
    cam = FakeCamera(num_frames=150, period=0.002)
    src = LatestFrameSource(cam, "fake", timeout=2.0)
    got, newest_at_return = [], []
    while True:
        ok, img = src.read()
        if not ok:
            break
        newest_at_return.append(cam.produced - 1)
        assert int(img[0, 0, 0]) == src.frame_index % 256  # the frame handed out is the one numbered
        got.append(src.frame_index)
        time.sleep(0.02)  # a consumer ~10x slower than the camera
    src.release()
    assert cam.released and src.captured == 150
    assert got == sorted(set(got)) and got[-1] == 149  # increasing, and the very last frame is shown
    assert len(got) < 60 and src.dropped == 150 - len(got)  # a slow consumer sees gaps, not a backlog
    # At each return the frame was the newest captured (one more may land between return and check).
    assert all(n - g <= 1 for g, n in zip(got, newest_at_return))
    assert src.read() == (False, None)


def test_latest_frame_source_reports_the_end_and_a_stalled_capture():
    class Stalled(FakeCamera):
        def read(self):
            if self.produced:
                threading.Event().wait(0.5)  # blocks like a camera that stopped sending
                return False, None
            return super().read()

    src = LatestFrameSource(Stalled(1, 0.001), "stalled", timeout=0.2)
    assert src.read()[0] is True
    t = time.perf_counter()
    assert src.read() == (False, None) and time.perf_counter() - t < 0.45  # timeout, not the capture's pace
    src.release()
