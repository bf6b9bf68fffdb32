"""Frame sources for the demo: video files, cameras and network streams, all OpenCV captures.

Everything downstream needs only ``read() -> (ok, frame)``, so tests substitute a fake capture.
Live sources (cameras, stream URLs) are wrapped in ``LatestFrameSource``: a thread reads the
capture as fast as it delivers and keeps only the newest frame. When inference is slower than
the camera, stale frames are dropped rather than queued, so the displayed label never drifts
behind what the camera sees now.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from pathlib import Path

import cv2
import numpy as np

from actionrec.data.video_io import utf8_alias
from actionrec.errors import UserError


class VideoSourceError(UserError, ValueError):
    """A source cannot be opened or delivers no frames; the message names it."""


def display_available() -> bool:
    """Whether a window can be shown (on Linux: an X11 or Wayland display is set)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence OpenCV's and FFmpeg's multi-line probe diagnostics; our one-line error replaces them."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
    except OSError:  # no real fd 2 (embedded interpreters): keep the noise
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        cv2.utils.logging.setLogLevel(level)


class FileSource:
    """Sequential frames of a video file; ``frame_index`` is the index of the last frame read."""

    live = False

    def __init__(self, capture, name: str, *, link_dir: str | None = None):
        self._cap, self.name, self._link_dir = capture, name, link_dir
        self.frame_index = -1
        self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.dropped = 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        ok, frame = self._cap.read()
        if ok and frame is not None:
            self.frame_index += 1
            return True, frame
        return False, None

    def release(self) -> None:
        self._cap.release()
        if self._link_dir is not None:  # the plain-named alias of a non-UTF-8 file name
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None


class LatestFrameSource:
    """Reads ``capture`` on a daemon thread and hands out only the newest frame.

    ``read()`` blocks until a frame newer than the last one returned arrives (or the capture
    ends, or ``timeout`` passes) and returns it; frames captured in between are counted in
    ``dropped``. ``frame_index`` is the capture sequence number of the last returned frame.

    Args:
        capture: anything with ``read() -> (ok, frame)`` and ``release()``.
        name: for messages.
        timeout: seconds ``read`` waits for a new frame before reporting the end of the stream.
        fps: frame rate to report (default: the capture's CAP_PROP_FPS when it has ``get``).
    """

    live = True

    def __init__(self, capture, name: str = "stream", *, timeout: float = 5.0, fps: float | None = None):
        self._cap, self.name, self.timeout = capture, name, timeout
        if fps is None and hasattr(capture, "get"):
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps or 0.0
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = -1  # sequence number of the stored (newest) frame
        self.frame_index = -1  # sequence number of the last frame handed out
        self.captured = 0
        self.dropped = 0
        self._ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture:{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok, frame = self._cap.read()
            except Exception:  # a dying device can raise inside OpenCV; treat it as the end
                ok, frame = False, None
            with self._cond:
                if not ok or frame is None:
                    self._ended = True
                    self._cond.notify_all()
                    return
                self._seq += 1
                self.captured += 1
                self._frame = frame  # the previous frame, if never read, is dropped here
                self._cond.notify_all()

    def read(self) -> tuple[bool, np.ndarray | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._seq > self.frame_index or self._ended or self._stop.is_set(),
                                timeout=self.timeout)
            if self._seq > self.frame_index:
                self.dropped += self._seq - self.frame_index - 1
                self.frame_index = self._seq
                return True, self._frame
            return False, None

    def wait_started(self, timeout: float) -> bool:
        """Wait until the capture delivered its first frame; False if it ended or timed out first."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq >= 0 or self._ended, timeout=timeout)
            return self._seq >= 0

    def release(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # A camera read can block for a frame period; don't hang forever on a wedged device.
        self._thread.join(timeout=2.0)
        self._cap.release()


def parse_source(source: str | int | None, webcam: int | None = None) -> tuple[str, str | int]:
    """('camera', index), ('url', url) or ('file', path) for a SOURCE argument or --webcam."""
    if webcam is not None:
        return "camera", int(webcam)
    if source is None or source == "":
        raise VideoSourceError("no source given: pass a video file, a camera index (0) or a stream URL")
    if isinstance(source, int) or str(source).isdigit():
        return "camera", int(source)
    if "://" in str(source):
        return "url", str(source)
    return "file", str(source)


def open_source(source: str | int | None, *, webcam: int | None = None, timeout: float = 5.0):
    """Open a video file (``FileSource``), camera or stream URL (``LatestFrameSource``).

    Raises:
        FileNotFoundError: the file does not exist.
        VideoSourceError: not a video OpenCV can decode, no camera at that index, or no frames.
    """
    kind, value = parse_source(source, webcam)
    if kind == "file":
        path = Path(value).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"video not found: {path}")
        if not path.is_file():
            raise VideoSourceError(f"{path}: not a file")
        name, link_dir = utf8_alias(str(path))  # OpenCV crashed on file names that are not UTF-8
        with _quiet_native_stderr():
            cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
            ok = cap.isOpened() and cap.read()[0]
        cap.release()
        if not ok:
            if link_dir is not None:
                shutil.rmtree(link_dir, ignore_errors=True)
            raise VideoSourceError(f"{path}: not a video OpenCV can decode")
        # Reopen rather than seek back: seeking is not frame-exact in every container.
        return FileSource(cv2.VideoCapture(name, cv2.CAP_FFMPEG), str(path), link_dir=link_dir)
    with _quiet_native_stderr():
        cap = cv2.VideoCapture(value)
        opened = cap.isOpened()
    if not opened:
        cap.release()
        what = f"camera {value}: no camera at this index (or it is in use)" if kind == "camera" else \
            f"{value}: cannot open the stream"
        raise VideoSourceError(what)
    src = LatestFrameSource(cap, name=f"camera {value}" if kind == "camera" else str(value), timeout=timeout)
    if not src.wait_started(timeout):
        src.release()
        raise VideoSourceError(f"{src.name}: opened but delivered no frame within {timeout:g} s")
    return src
