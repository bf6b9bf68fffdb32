"""Streaming clip classification: every frame through the CNN once, the head over a ring buffer.

Offline, a clip of T frames costs T backbone passes. Re-running that clip every few frames of a
live video would push each frame through the CNN T/stride times; here each sampled frame is
encoded once, its feature enters a ring buffer of the last ``clip_len`` features, and only the
cheap temporal head re-runs, every ``stride`` sampled frames (also while the buffer is still
filling, over the frames seen so far). Window probabilities are averaged over the last
``smooth`` windows to steady the displayed label.

Time span: training clips are TSN segment samples spread over a whole video, while a stream
window is the last ``clip_len`` sampled frames. ``frame_step`` > 1 samples every Nth source frame
so that a window spans about as much time as a training clip did (roughly: typical training
video length / clip_len); the cost is latency, as a window then covers clip_len * frame_step frames.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np


class Backend(Protocol):
    def features(self, rgb: np.ndarray) -> np.ndarray: ...

    def head(self, feats: np.ndarray) -> np.ndarray: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64) - np.max(logits)
    e = np.exp(z)
    return (e / e.sum()).astype(np.float32)


@dataclass
class Prediction:
    """One head run.

    Attributes:
        frame: source index of the newest frame in the window.
        window: source indices of the window's frames, oldest first (fewer than clip_len while filling).
        window_probs: softmax of this window alone, (K,).
        probs: mean of the last ``smooth`` window_probs, (K,); what is displayed.
        topk: (class name, probability) pairs from ``probs``, best first.
    """

    frame: int
    window: list[int]
    window_probs: np.ndarray
    probs: np.ndarray
    topk: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self, time_s: float | None = None) -> dict:
        return {
            "frame": self.frame,
            "time": None if time_s is None else round(float(time_s), 4),
            "window_start": self.window[0],
            "window_len": len(self.window),
            "topk": [{"label": name, "prob": round(float(p), 5)} for name, p in self.topk],
        }


class StreamingClassifier:
    """Feeds frames one at a time; returns a ``Prediction`` whenever the head runs.

    Args:
        backend: object with ``features(rgb) -> (D,)`` and ``head((n, D)) -> (K,)`` logits.
        class_names: K names, in the model's label order.
        clip_len: T, the window length in sampled frames (the checkpoint's ``data.clip_len``).
        stride: run the head every this many sampled frames.
        smooth: average the probabilities of the last this many windows.
        topk: how many classes a prediction lists.
        frame_step: sample every Nth source frame (by source index); others skip the CNN.
    """

    def __init__(
        self,
        backend: Backend,
        class_names: Sequence[str],
        *,
        clip_len: int,
        stride: int = 4,
        smooth: int = 5,
        topk: int = 3,
        frame_step: int = 1,
    ):
        for name, v in (("clip_len", clip_len), ("stride", stride), ("smooth", smooth), ("topk", topk),
                        ("frame_step", frame_step)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.backend = backend
        self.class_names = list(class_names)
        self.clip_len, self.stride, self.smooth = clip_len, stride, smooth
        self.topk, self.frame_step = min(topk, len(self.class_names)), frame_step
        self.reset()

    def reset(self) -> None:
        self._feats: np.ndarray | None = None  # (T, D) ring buffer, allocated on the first frame
        self._index = np.zeros(self.clip_len, np.int64)  # source index of each slot
        self._count = 0  # features written so far; slot of the next one = count % T
        self._next = None  # smallest source index that is sampled next
        self._recent: deque[np.ndarray] = deque(maxlen=self.smooth)

    @property
    def num_sampled(self) -> int:
        return self._count

    def wants(self, index: int) -> bool:
        """Whether the frame with source ``index`` is sampled (callers skip decoding work otherwise)."""
        return self._next is None or index >= self._next

    def sampled(self, indices: Sequence[int]) -> list[int]:
        """Which of the coming source ``indices`` (increasing) will be sampled; the state is not changed.

        Lets a caller encode the sampled frames of a chunk in one CNN batch (``push_features``).
        """
        nxt, out = self._next, []
        for i in indices:
            if nxt is None or i >= nxt:
                out.append(i)
                nxt = i + self.frame_step
        return out

    def push(self, rgb: np.ndarray, index: int) -> Prediction | None:
        """Add one RGB uint8 (H, W, 3) frame with its source index (increasing; gaps allowed)."""
        if not self.wants(index):
            return None
        return self.push_features(self.backend.features(rgb), index)

    def push_features(self, feat: np.ndarray, index: int) -> Prediction | None:
        """``push`` for a frame whose (D,) CNN feature was computed elsewhere (a batch of frames)."""
        if not self.wants(index):
            return None
        feat = np.asarray(feat, np.float32).reshape(-1)
        if self._feats is None:
            self._feats = np.zeros((self.clip_len, feat.size), np.float32)
        slot = self._count % self.clip_len
        self._feats[slot], self._index[slot] = feat, index
        self._count += 1
        self._next = index + self.frame_step
        if self._count % self.stride:
            return None
        return self._predict()

    def window(self) -> tuple[np.ndarray, list[int]]:
        """The buffered features (n, D) and their source indices, oldest first (n <= clip_len)."""
        n = min(self._count, self.clip_len)
        slots = [(self._count - n + i) % self.clip_len for i in range(n)]
        if self._feats is None:
            return np.zeros((0, 0), np.float32), []
        return self._feats[slots], [int(self._index[s]) for s in slots]

    def _predict(self) -> Prediction:
        feats, indices = self.window()
        window_probs = softmax(self.backend.head(feats))
        self._recent.append(window_probs)
        probs = np.mean(np.stack(self._recent), axis=0)
        order = np.argsort(-probs, kind="stable")[: self.topk]
        top = [(self.class_names[i], float(probs[i])) for i in order]
        return Prediction(frame=indices[-1], window=indices, window_probs=window_probs, probs=probs, topk=top)


def iter_frames(source, *, max_frames: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(source index, BGR frame) from anything with ``read() -> (ok, frame)`` (cv2.VideoCapture-like).

    The index is ``source.frame_index`` when the source tracks it (live sources skip dropped
    frames), otherwise a running count.
    """
    count = 0
    while not max_frames or count < max_frames:
        ok, frame = source.read()
        if not ok or frame is None:
            return
        index = getattr(source, "frame_index", None)
        yield (count if index is None else int(index)), frame
        count += 1


class FpsMeter:
    """Frames per second over the last ``window`` ticks (wall clock)."""

    def __init__(self, window: int = 30):
        self._times: deque[float] = deque(maxlen=window)

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        return self.fps

    @property
    def fps(self) -> float:
        if len(self._times) < 2 or self._times[-1] == self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])
