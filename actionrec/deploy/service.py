"""The model behind ``tools/serve.py``: a checkpoint or an ONNX export folder, and its two answers.

Whole-video scores are ``tools/eval.py``'s multi-clip scores: the views its dataset builds
(``uploads``), the CNN per frame, the head per clip, and the softmax averaged over views
(``engine.metrics.pool_views`` for a checkpoint). The timeline is ``tools/demo.py``'s: a
``StreamingClassifier`` over every ``frame_step``-th frame, a head run every ``stride`` sampled
frames over the last ``clip_len`` features, averaged over ``smooth`` windows. Both take CNN
features computed elsewhere (the server's ``DynamicBatcher``), so the functions here are cheap and
run on the batcher's thread. Nothing imports torch unless a checkpoint is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actionrec.deploy.backends import META_NAME, ModelFileError, load_onnx_backend, read_meta
from actionrec.deploy.streaming import StreamingClassifier, softmax
from actionrec.deploy.uploads import DecodeSpec, reader_settings

log = logging.getLogger(__name__)

# Exports written before model.json had an "eval" entry: the config defaults of the time.
_OLD_EXPORT_EVAL = {"num_clips": 10, "sampling": {"mode": "segment", "frame_interval": 1, "short_video": "loop"}}


@dataclass
class ServedModel:
    """Everything the server needs about its model.

    Attributes:
        kind: 'checkpoint' (torch) or 'onnx' (onnxruntime, no torch).
        source: the path it was loaded from.
        backend: ``TorchBackend`` or ``OnnxBackend`` (``features_batch``, ``head_batch``, ``head``, ``preprocess``).
        class_names: K names in label order.
        clip_len: frames per clip (T).
        spec: what the decode workers need (``uploads.DecodeSpec``).
        defaults: stride, smooth, topk, frame_step (demo settings), num_clips, num_crops (eval settings).
        info: what ``GET /v1/model`` shows (backbone, preprocessing, ...).
    """

    kind: str
    source: str
    backend: Any
    class_names: list[str]
    clip_len: int
    spec: DecodeSpec
    defaults: dict
    info: dict

    def pool(self, logits: np.ndarray, num_views: int) -> np.ndarray:
        """(V, K) logits of one video's views -> (K,) mean softmax, as ``tools/eval.py`` pools them."""
        if self.kind == "checkpoint":
            import torch

            from actionrec.engine.metrics import pool_views

            return pool_views(torch.from_numpy(logits), num_views)[0].numpy()
        return np.mean(np.stack([softmax(row) for row in logits]), axis=0)


def is_export_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p.is_dir() and (p / META_NAME).is_file()) or p.name == META_NAME or p.suffix == ".onnx"


def load_served_model(path: str | Path, *, device: str = "cpu", threads: int = 0, int8: bool = False) -> ServedModel:
    """Load a checkpoint (``tools/train.py``) or an export folder (``tools/export.py``) for serving.

    ``int8``: an export folder's int8 model (``tools/export.py --int8``: static int8 backbone, int8
    head); a checkpoint's head dynamically quantised (CPU), as ``tools/demo.py --int8`` does.

    Raises:
        ModelFileError, CheckpointError, FileNotFoundError: the path cannot be served.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} (pass a checkpoint or an export folder)")
    if is_export_dir(path):
        return _load_onnx(path, threads, int8)
    if path.is_dir():
        raise ModelFileError(f"{path}: a folder without {META_NAME}; pass a checkpoint file or an export folder")
    return _load_checkpoint(path, device, threads, int8)


def _load_onnx(path: Path, threads: int, int8: bool = False) -> ServedModel:
    backend, meta = load_onnx_backend(path, threads=threads, int8=int8)
    folder, _ = read_meta(path)
    ev = meta.get("eval")
    if ev is None:
        log.warning("%s: written by an older tools/export.py (no eval settings); assuming %s", folder, _OLD_EXPORT_EVAL)
        ev = _OLD_EXPORT_EVAL
    spec = DecodeSpec(kind="onnx", clip_len=int(meta["clip_len"]), sampling=dict(ev["sampling"]),
                      preprocess=dict(meta["preprocess"]), backend=ev.get("backend", "auto"), seek=ev.get("seek", "auto"))
    defaults = {**meta["demo"], "num_clips": int(ev["num_clips"]), "num_crops": 1}
    info = {"backbone": meta.get("backbone", "(ONNX export)"), "runtime": "onnxruntime int8" if int8 else "onnxruntime",
            "preprocess": meta["preprocess"],
            "sampling": ev["sampling"], "files": meta.get("files", {}), "checkpoint": meta.get("checkpoint")}
    return ServedModel("onnx", str(folder), backend, list(meta["class_names"]), int(meta["clip_len"]), spec, defaults, info)


def _load_checkpoint(path: Path, device: str, threads: int, int8: bool = False) -> ServedModel:
    import torch

    from actionrec import build
    from actionrec.engine.distributed import resolve_device

    cfg, model, classes = build.model_from_checkpoint(path)
    dev = resolve_device(device)
    if int8:
        from actionrec.deploy.export import quantize_head

        model, dev = quantize_head(model), torch.device("cpu")  # int8 kernels are CPU-only
    model.place(dev, dev)
    if threads > 0:
        torch.set_num_threads(threads)
    from actionrec.deploy.backends import TorchBackend

    backend = TorchBackend(model, lambda rgb, _tf=build.eval_transforms_from(cfg.data)[0]: _tf.frame(rgb).numpy())
    backend_name, seek = reader_settings(cfg.data)
    spec = DecodeSpec(kind="checkpoint", clip_len=cfg.data.sampling.clip_len, config=cfg, backend=backend_name, seek=seek)
    defaults = {"stride": cfg.demo.stride, "smooth": cfg.demo.smooth, "topk": cfg.demo.topk,
                "frame_step": cfg.demo.frame_step, "num_clips": cfg.eval.num_clips, "num_crops": cfg.eval.num_crops}
    info = {"backbone": cfg.model.backbone, "runtime": f"torch {torch.__version__} on {dev}{', int8 head' if int8 else ''}",
            "preprocess": build.transform_kwargs(cfg.data),
            "sampling": build.sampling_spec(cfg.data),
            "temporal": cfg.model.temporal, "pooling": cfg.model.pooling, "feature_grid": cfg.model.feature_grid}
    return ServedModel("checkpoint", str(path), backend, classes, cfg.data.sampling.clip_len, spec, defaults, info)


def top_entries(probs: np.ndarray, names: list[str], k: int) -> list[dict]:
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [{"label": names[i], "score": round(float(probs[i]), 6)} for i in order]


class _Encoded:
    """A streaming backend whose frames arrive already encoded: ``features`` is the identity."""

    def __init__(self, backend):
        self._backend = backend

    def features(self, feat: np.ndarray) -> np.ndarray:
        return feat

    def head(self, feats: np.ndarray) -> np.ndarray:
        return self._backend.head(feats)


class _Recorded(_Encoded):
    """Pass 1 of an offline timeline: keeps each window the classifier asks the head about."""

    def __init__(self, num_classes: int):
        self.windows: list[np.ndarray] = []
        self._k = num_classes

    def head(self, feats: np.ndarray) -> np.ndarray:
        self.windows.append(np.array(feats))
        return np.zeros(self._k, np.float32)


class _Replayed(_Encoded):
    """Pass 2: answers the same windows, in the same order, with logits computed in batches."""

    def __init__(self, logits: list[np.ndarray]):
        self._logits = iter(logits)

    def head(self, feats: np.ndarray) -> np.ndarray:
        return next(self._logits)


def streaming_classifier(model: ServedModel, *, stride: int, smooth: int, topk: int, frame_step: int,
                         backend=None) -> StreamingClassifier:
    """The demo's classifier over features the batcher computed (``push(feature, index)``)."""
    return StreamingClassifier(backend or _Encoded(model.backend), model.class_names, clip_len=model.clip_len,
                               stride=stride, smooth=smooth, topk=topk, frame_step=frame_step)


def by_length(seqs: list[np.ndarray]) -> dict[int, list[int]]:
    """Indices of the sequences of each length: sequences of one length stack without padding.

    One ``head_batch`` call over a stack equals one ``head`` call per sequence (the demo's) for the
    LSTM head, in torch and in ONNX alike (head.onnx takes no lengths).
    """
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(seqs):
        groups.setdefault(len(x), []).append(i)
    return groups


@dataclass
class AnswerPlan:
    """A video's head work: the evaluation clips' features, then the timeline's windows."""

    seqs: list[np.ndarray]  # (T, D) per clip view, then (n, D) per timeline window
    num_views: int
    steps: list[tuple[np.ndarray, int]]  # (feature, source index) per timeline frame
    options: dict


def plan_answer(model: ServedModel, feats: np.ndarray, decoded: dict, *, topk: int, stride: int, smooth: int,
                frame_step: int) -> AnswerPlan:
    """Pass 1: the windows the demo's ``StreamingClassifier`` would hand its head, for batching.

    Args:
        feats: (R, D) CNN features of ``decoded["rows"]`` (a successful ``uploads.decode_upload`` result).
    """
    views = feats[decoded["view_rows"]]  # (V, T) row indices -> (V, T, D)
    steps = list(zip(feats[decoded["timeline_rows"]], decoded["timeline_frames"]))
    options = dict(stride=stride, smooth=smooth, topk=topk, frame_step=frame_step)
    recorder = _Recorded(len(model.class_names))
    clf = streaming_classifier(model, backend=recorder, **options)
    for feat, index in steps:
        clf.push(feat, index)
    return AnswerPlan(list(views) + recorder.windows, len(views), steps, options)


def finish_answer(model: ServedModel, plan: AnswerPlan, logits: list[np.ndarray], decoded: dict) -> dict:
    """Pass 2: eval's pooled scores of the clips, and the demo's timeline replayed with the windows' logits.

    Returns:
        ``{"frames", "fps", "top", "timeline"}``.
    """
    probs = model.pool(np.stack(logits[: plan.num_views]), plan.num_views)
    clf = streaming_classifier(model, backend=_Replayed(logits[plan.num_views:]), **plan.options)
    fps = float(decoded["fps"]) or 25.0  # no rate in the container: the demo's assumption for files
    timeline = []
    for feat, index in plan.steps:
        pred = clf.push(feat, index)
        if pred is not None:
            timeline.append({"t": round(index / fps, 4), "frame": int(index),
                             "top": [{"label": n, "score": round(p, 6)} for n, p in pred.topk]})
    return {"frames": int(decoded["frames"]), "fps": round(float(decoded["fps"]), 4),
            "top": top_entries(probs, model.class_names, plan.options["topk"]), "timeline": timeline}
