"""Shared fixtures: tiny clips written with OpenCV into pytest's temp dirs."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

INDEX_VIDEO_FRAMES = 48
_CELL = 16  # 4x4 grid of 16x16 cells: aligned to codec macroblocks, so it survives


def index_frame(i: int, size: int = 64) -> np.ndarray:
    """An RGB frame encoding ``i`` (< 48): cell ``i % 16`` lit in channel ``i // 16``."""
    frame = np.full((size, size, 3), 40, np.uint8)
    row, col = divmod(i % 16, 4)
    block = frame[row * _CELL:(row + 1) * _CELL, col * _CELL:(col + 1) * _CELL]
    block[..., i // 16] = 255
    return frame


def decode_index(frame: np.ndarray) -> int:
    """Inverse of ``index_frame``, tolerant of lossy compression; -1 if no index shows."""
    cells = frame[:64, :64].reshape(4, _CELL, 4, _CELL, 3).mean(axis=(1, 3)).reshape(16, 3)
    cell, channel = divmod(int(cells.argmax()), 3)
    lit = np.zeros((16, 3), bool)
    lit[cell, channel] = True
    # Garbage (grey, smeared or blended frames) must not decode to a valid index.
    if cells[lit][0] < 180 or cells[~lit].max() > 100:
        return -1
    return channel * 16 + cell


@pytest.fixture(scope="session")
def make_video(tmp_path_factory) -> Callable[..., Path]:
    """Returns ``write(path, frames, fps=25, fourcc="XVID") -> Path``.

    ``frames`` is (T, H, W, 3) RGB uint8. A relative ``path`` lands in a fresh
    temp dir. ``fourcc`` is "XVID" (use .avi) or "mp4v" (use .mp4).
    """
    counter = itertools.count()

    def write(path: str | Path, frames: np.ndarray, fps: float = 25,
              fourcc: str = "XVID") -> Path:
        path = Path(path)
        if not path.is_absolute():
            path = tmp_path_factory.mktemp(f"video{next(counter)}") / path
        t, h, w, _ = frames.shape
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
        assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))  # OpenCV wants BGR
        writer.release()
        return path

    return write


@pytest.fixture(scope="session")
def frame_index_frames() -> np.ndarray:
    """The 48 source frames (48, 64, 64, 3) of ``frame_index_video``."""
    return np.stack([index_frame(i) for i in range(INDEX_VIDEO_FRAMES)])


@pytest.fixture(scope="session")
def frame_index_video(make_video, frame_index_frames) -> Path:
    """48-frame 64x64 XVID .avi at 25 fps; ``decode_index`` recovers each frame's index."""
    return make_video("index.avi", frame_index_frames, fps=25, fourcc="XVID")


@pytest.fixture(scope="session")
def frame_index_of() -> Callable[[np.ndarray], int]:
    """``decode_index`` as a fixture, so tests need not import conftest."""
    return decode_index


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 32-video synthetic UCF-style dataset (8 classes x 4 groups, 64x48, <= 16 frames)."""
    from actionrec.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny") / "ucf"
    return generate_synthetic_dataset(root, num_groups=4, clips_per_group=1, width=64, height=48, max_frames=16, seed=0)


@pytest.fixture
def tiny_dataset_copy(tiny_dataset, tmp_path) -> Path:
    """A copy of ``tiny_dataset`` in the test's own folder, for tests that add, move or damage files."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "ucf", symlinks=True))


@pytest.fixture(scope="session")
def train_tool():
    """tools/train.py as a module (``main``, ``parse_args``)."""
    from tests.helpers import load_tool

    return load_tool("train")


def _torch_threads(n: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test (``pytestmark = pytest.mark.usefixtures(...)``).

    Batch-1 frame passes and tiny models gain nothing from more threads; on a busy CI machine the
    thread hand-offs cost far more than the work (measured 20 s vs 1 s for the streaming tests).
    """
    yield from _torch_threads(1)


@pytest.fixture
def two_torch_threads():
    """Two torch threads: the explain tests' brief training and 128 px Grad-CAM passes use both cores."""
    yield from _torch_threads(2)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """tools/train.py's last.pt after 20 epochs of the tiny deploy model (test_resnet, 4 frames of 32 px) on a
    32-video synthetic dataset (~15 s; train top-1 ~0.6, test ~0.4 of 8 classes): a model with learned
    features, which int8, pruning and distillation must keep, unlike an untrained one. Defined here, not in
    tests/tools/deploy_helpers.py, so that the session trains it once for every module that uses it."""
    import torch

    from actionrec.data.synthetic import generate_synthetic_dataset
    from tests.tools.deploy_helpers import REPO, TINY_MODEL, load_tool

    root = generate_synthetic_dataset(tmp_path_factory.mktemp("trained_data") / "ucf", num_groups=4, clips_per_group=1,
                                      width=64, height=48, max_frames=16, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("trained")
        tool = load_tool("train")
        tool.main(tool.parse_args(["--config", str(REPO / "configs" / "quickstart.yaml"), f"data.root={root}",
                                   *TINY_MODEL, "train.epochs=20", "train.cpu_threads=1", "train.amp=none",
                                   f"train.output_dir={out}", "train.name=tiny"]))
    finally:
        torch.set_num_threads(threads)
    return out / "tiny" / "last.pt"
