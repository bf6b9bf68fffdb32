"""Per-frame preprocessing and the two model parts a streaming classifier calls.

A backend exposes ``features(rgb) -> (D,)`` (one frame through the CNN) and
``head(feats) -> (K,)`` (the temporal head over (T, D) features, oldest first, logits).
``TorchBackend`` wraps a ``CNNLSTM``; ``OnnxBackend`` runs the files written by
``tools/export.py`` in onnxruntime, described by the ``model.json`` next to them.
torch is imported lazily so that the ONNX path needs numpy, OpenCV and onnxruntime only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from actionrec.errors import UserError

META_NAME = "model.json"
META_FORMAT = "actionrec-onnx"
META_VERSION = 1


class ModelFileError(UserError, ValueError):
    """An exported model folder or file is missing, unreadable or inconsistent."""


class FramePreprocessor:
    """numpy/OpenCV twin of the eval transform (``data.transforms.eval_transform``, centre crop).

    Resize the short side to ``resize_short`` (bilinear, long side rounded as albumentations'
    ``SmallestMaxSize`` does), centre crop ``crop_size``, normalise; returns (3, S, S) float32.
    Kept free of albumentations and torch for deployment; a test pins it to the eval transform.
    """

    def __init__(self, *, resize_short: int, crop_size: int, mean: Sequence[float], std: Sequence[float]):
        if crop_size > resize_short:
            raise ValueError(f"crop_size {crop_size} exceeds resize_short {resize_short}")
        self.resize_short, self.crop_size = int(resize_short), int(crop_size)
        self._shift = np.asarray(mean, np.float32) * 255.0
        self._scale = 1.0 / (np.asarray(std, np.float32) * 255.0)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        scale = self.resize_short / min(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        s = self.crop_size
        y, x = (nh - s) // 2, (nw - s) // 2
        crop = rgb[y : y + s, x : x + s].astype(np.float32)
        out = (crop - self._shift) * self._scale
        return np.ascontiguousarray(out.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)


class TorchBackend:
    """A ``CNNLSTM`` in eval mode: ``frame_features`` per frame, ``forward_head`` per window.

    Args:
        model: the model (any device; features come back as float32 numpy on the CPU).
        preprocess: RGB uint8 (H, W, 3) -> (3, S, S) array or tensor, e.g. the eval transform's ``frame``.
    """

    def __init__(self, model: Any, preprocess: Callable[[np.ndarray], Any]):
        self.model = model.eval()
        self.preprocess = preprocess
        self.frames_encoded = 0  # frames pushed through the CNN (each exactly once in streaming)

    def features(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        x = torch.as_tensor(self.preprocess(rgb))[None]  # (1, 3, S, S)
        with torch.inference_mode():
            feat = self.model.frame_features(x)
        self.frames_encoded += 1
        return feat[0].float().cpu().numpy()

    def head(self, feats: np.ndarray) -> np.ndarray:
        # A partial window is passed as its n valid steps: for one sequence this equals padding
        # to T with lengths=n (packed LSTM, masked pooling), and needs no padding in ONNX either.
        import torch

        with torch.inference_mode():
            logits = self.model.forward_head(torch.from_numpy(np.ascontiguousarray(feats))[None])
        return logits[0].float().cpu().numpy()

    def features_batch(self, frames: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) preprocessed float32 frames -> (N, D) features in one backbone call (the server's batches)."""
        import torch

        with torch.inference_mode():
            feat = self.model.frame_features(torch.from_numpy(np.ascontiguousarray(frames, np.float32)))
        self.frames_encoded += len(frames)
        return feat.float().cpu().numpy()

    def head_batch(self, feats: np.ndarray) -> np.ndarray:
        """(B, T, D) features -> (B, K) logits (whole clips; the server's multi-clip scores)."""
        import torch

        with torch.inference_mode():
            logits = self.model.forward_head(torch.from_numpy(np.ascontiguousarray(feats, np.float32)))
        return logits.float().cpu().numpy()


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=ort.get_available_providers())
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise ModelFileError(f"{path}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None


class OnnxBackend:
    """The exported per-frame backbone and temporal head, run in onnxruntime.

    Args:
        backbone_path: ONNX file (N, 3, S, S) frames -> (N, D) features.
        head_path: ONNX file (B, T, D) features -> (B, K) logits (dynamic B and T).
        preprocess: RGB uint8 frame -> (3, S, S) float32 array (``FramePreprocessor``).
        threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(self, backbone_path: str | Path, head_path: str | Path, preprocess: Callable, *, threads: int = 0):
        self._cnn = _session(Path(backbone_path), threads)
        self._head = _session(Path(head_path), threads)
        self._cnn_in = self._cnn.get_inputs()[0].name
        self._head_in = self._head.get_inputs()[0].name
        self.preprocess = preprocess
        self.frames_encoded = 0

    def features(self, rgb: np.ndarray) -> np.ndarray:
        x = np.asarray(self.preprocess(rgb), dtype=np.float32)[None]
        feat = self._cnn.run(None, {self._cnn_in: x})[0]
        self.frames_encoded += 1
        return feat[0]

    def head(self, feats: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(feats, dtype=np.float32)[None]
        return self._head.run(None, {self._head_in: x})[0][0]

    def features_batch(self, frames: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) preprocessed float32 frames -> (N, D) features in one call (dynamic batch axis)."""
        feat = self._cnn.run(None, {self._cnn_in: np.ascontiguousarray(frames, np.float32)})[0]
        self.frames_encoded += len(frames)
        return feat

    def head_batch(self, feats: np.ndarray) -> np.ndarray:
        """(B, T, D) features -> (B, K) logits."""
        return self._head.run(None, {self._head_in: np.ascontiguousarray(feats, np.float32)})[0]


def write_meta(out_dir: str | Path, meta: dict) -> Path:
    """Write ``model.json`` (class names, preprocessing, clip length, demo settings, file names)."""
    path = Path(out_dir) / META_NAME
    path.write_text(json.dumps({"format": META_FORMAT, "version": META_VERSION, **meta}, indent=2))
    return path


def read_meta(path: str | Path) -> tuple[Path, dict]:
    """Find and read ``model.json`` for an export folder, the file itself, or any file in the folder.

    Returns:
        (folder, meta dict).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"--onnx: not found: {path}")
    folder = path if path.is_dir() else path.parent
    meta_path = folder / META_NAME
    if not meta_path.is_file():
        raise ModelFileError(f"{folder}: no {META_NAME}; pass the folder written by tools/export.py")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{meta_path}: not valid JSON ({e})") from None
    if meta.get("format") != META_FORMAT or meta.get("version") != META_VERSION:
        raise ModelFileError(f"{meta_path}: not an actionrec export (format {meta.get('format')!r} "
                             f"version {meta.get('version')!r}; this code reads {META_FORMAT!r} {META_VERSION})")
    return folder, meta


def load_onnx_backend(path: str | Path, *, int8: bool = False, threads: int = 0) -> tuple[OnnxBackend, dict]:
    """An ``OnnxBackend`` for an export folder (see ``read_meta``), with its metadata.

    Args:
        path: export folder, its ``model.json``, or any file in it.
        int8: the int8 model: the statically quantised backbone (``backbone_int8.onnx``, written by
            ``tools/export.py --int8``) and the dynamically quantised head (``head_int8.onnx``).
        threads: onnxruntime intra-op threads (0: its default).

    Raises:
        ModelFileError: a file is missing, or ``int8`` for an export made without ``--int8``.
    """
    folder, meta = read_meta(path)
    files = meta.get("files", {})
    keys = ("backbone_int8", "head_int8") if int8 else ("backbone", "head")
    if int8 and "backbone_int8" not in files:
        raise ModelFileError(f"{folder / META_NAME}: no int8 backbone in this export; run tools/export.py with --int8")
    for key in keys:
        if key not in files:
            raise ModelFileError(f"{folder / META_NAME}: lists no {key!r} file")
        if not (folder / files[key]).is_file():
            raise ModelFileError(f"{folder / files[key]}: missing (listed in {META_NAME})")
    pre = FramePreprocessor(**meta["preprocess"])
    backend = OnnxBackend(folder / files[keys[0]], folder / files[keys[1]], pre, threads=threads)
    return backend, meta
