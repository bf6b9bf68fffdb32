"""Helpers shared by the demo and export tests: a tiny dataset and checkpoint, a generated video."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import pytest
import torch

from actionrec import build
from actionrec.config import config_to_dict, load_config
from actionrec.data.splits import load_split
from actionrec.data.synthetic import render_synthetic_video
from actionrec.engine.checkpoint import atomic_save, make_checkpoint

REPO = Path(__file__).resolve().parents[2]


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"actionrec_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def deploy_dataset(tiny_dataset) -> Path:
    """The shared ``tiny_dataset`` (conftest): 8 classes x 4 groups, 64x48, <= 16 frames; 8 test videos."""
    return tiny_dataset


# feature_grid=2 as in configs/quickstart.yaml, so export and demo are tested with grid pooling.
# W&B off: tools/eval.py and tools/explain.py log to W&B in the checkpoint's mode (tests that want it override).
TINY_MODEL = ["data.clip_len=4", "data.resize_short=40", "data.crop_size=32", "data.num_workers=0",
              "model.backbone=test_resnet", "model.feature_grid=2", "model.hidden_size=16", "eval.batch_size=4", "train.device=cpu",
              "demo.stride=2", "demo.smooth=3", "demo.topk=3", "logging.wandb.mode=disabled"]


def write_tiny_checkpoint(path: Path, data_root: Path, *, seed: int = 0, overrides: tuple[str, ...] = ()) -> Path:
    """An untrained test_resnet + BiLSTM checkpoint in the format tools/train.py writes (no training: fast).

    ``overrides`` change the stored config (e.g. ``train.amp=fp16``: a checkpoint trained on a GPU).
    """
    cfg = load_config(None, [f"data.root={data_root}", *TINY_MODEL, *overrides])
    classes = list(load_split(data_root).classes)
    torch.manual_seed(seed)
    model = build.model_from(cfg, len(classes))
    # Spread the logits so that predictions are not near-ties (int8 rounding could flip ties).
    with torch.no_grad():
        model.head.fc.weight.mul_(20.0)
    ckpt = make_checkpoint(model=model, optimizer=None, scheduler=None, scaler=None, epoch=0, step=0,
                           config=config_to_dict(cfg), class_names=classes)
    atomic_save(ckpt, path)
    return path


def write_test_video(path: Path, *, num_frames: int = 22, width: int = 64, height: int = 48, fps: float = 25.0) -> Path:
    """An mp4v .mp4 of a synthetic 'Grow' clip."""
    frames = render_synthetic_video("Grow", 1, 1, num_frames, width=width, height=height, seed=3)  # BGR
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """(decoded frame count, (width, height)) read back with OpenCV."""
    cap = cv2.VideoCapture(str(path))
    n, size = 0, (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, (frame.shape[1], frame.shape[0])
    cap.release()
    return n, size

