"""ONNX export of a CNNLSTM (whole clip model and the two streaming parts), onnxruntime checks,
dynamic int8 quantisation of the temporal head, static int8 quantisation of the backbone, and the
measurements that justify them.

Files written by ``export_onnx``:
    clip.onnx      (B, T, 3, S, S) clips    -> (B, K) logits     dynamic B
    backbone.onnx  (N, 3, S, S) frames      -> (N, D) features   dynamic N
    head.onnx      (B, T, D) features       -> (B, K) logits     dynamic B and T (partial windows)

The TorchScript-based exporter is used (``dynamo=False``): the dynamo exporter needs onnxscript,
and the traced graph of the LSTM head exports with dynamic sequence length as a plain ONNX LSTM.
Only whole sequences are exported (no ``lengths``): ``pack_padded_sequence`` does not export, and
a partial streaming window is fed as its valid steps, which is equivalent for one sequence.
"""

from __future__ import annotations

import copy
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from actionrec.models.cnn_lstm import CNNLSTM


class _Stage(nn.Module):
    """One stage of the model as a module of its own: ``method`` ('frame_features' or 'forward_head') is its forward."""

    def __init__(self, model: CNNLSTM, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


def onnx_parts(model: CNNLSTM) -> dict[str, nn.Module]:
    """The three exportable modules, in eval mode: 'clip', 'backbone' and 'head'."""
    # eval() on each wrapper: torch.onnx.export restores the wrapper's own mode afterwards, and a
    # wrapper left in train mode would switch the shared model's dropout back on.
    return {"clip": model.eval(), "backbone": _Stage(model, "frame_features").eval(),
            "head": _Stage(model, "forward_head").eval()}


def example_inputs(model: CNNLSTM, *, clip_len: int, crop_size: int, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = crop_size
    return {
        "clip": torch.randn(batch, clip_len, 3, s, s, generator=g),
        "backbone": torch.randn(batch, 3, s, s, generator=g),
        "head": torch.randn(batch, clip_len, model.feature_dim, generator=g),
    }


_IO = {
    "clip": (["clips"], ["logits"], {"clips": {0: "batch"}, "logits": {0: "batch"}}),
    "backbone": (["frames"], ["features"], {"frames": {0: "batch"}, "features": {0: "batch"}}),
    "head": (["features"], ["logits"], {"features": {0: "batch", 1: "time"}, "logits": {0: "batch"}}),
}


def export_onnx(model: CNNLSTM, out_dir: str | Path, *, clip_len: int, crop_size: int, opset: int = 17) -> dict[str, Path]:
    """Export 'clip', 'backbone' and 'head' to ``out_dir/<name>.onnx`` (weights on the CPU).

    Returns:
        name -> path of the written file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    inputs = example_inputs(model, clip_len=clip_len, crop_size=crop_size, batch=2)
    paths = {}
    for name, module in onnx_parts(model).items():
        in_names, out_names, axes = _IO[name]
        path = out_dir / f"{name}.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is legacy and that traced shape checks in
            # nn.LSTM become constants; both are covered by the onnxruntime comparison over
            # several batch sizes and window lengths (max_abs_diff_onnx).
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, (inputs[name],), str(path), dynamo=False, input_names=in_names,
                              output_names=out_names, dynamic_axes=axes, opset_version=opset)
        paths[name] = path
    model.eval()
    return paths


def onnx_session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def max_abs_diff_onnx(model: CNNLSTM, paths: dict[str, Path], *, clip_len: int, crop_size: int,
                      batches: tuple[int, ...] = (1, 3)) -> dict[str, float]:
    """Largest |onnxruntime - torch| output difference per part, over random inputs of several
    batch sizes (checks the dynamic batch axis) and, for the head, a partial window too."""
    model = model.cpu().eval()
    parts = onnx_parts(model)
    out = {}
    for name, path in paths.items():
        if name not in parts:
            continue
        sess = onnx_session(path)
        in_name = sess.get_inputs()[0].name
        worst = 0.0
        cases = [(b, clip_len) for b in batches] + ([(1, max(1, clip_len // 2))] if name == "head" else [])
        for i, (b, t) in enumerate(cases):
            x = example_inputs(model, clip_len=t, crop_size=crop_size, batch=b, seed=100 + i)[name]
            with torch.inference_mode():
                ref = parts[name](x).numpy()
            got = sess.run(None, {in_name: x.numpy()})[0]
            if got.shape != ref.shape:
                raise RuntimeError(f"{path}: output shape {got.shape} != torch {ref.shape} for input {tuple(x.shape)}")
            worst = max(worst, float(np.abs(got - ref).max()))
        out[name] = worst
    return out


def quantize_head(model: CNNLSTM) -> CNNLSTM:
    """A copy of ``model`` whose head's LSTM and Linear layers are dynamically quantised to int8.

    Weights are stored as int8; activations are quantised on the fly per batch, so no calibration
    data is needed. Convolutions have no dynamic int8 kernels, so the backbone stays fp32 (CPU only).
    """
    from torch.ao.quantization import quantize_dynamic

    q = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency;
        # the eager dynamic API still works in the supported torch range (<2.15).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        q.head = quantize_dynamic(q.head, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
        for member in q.more_heads:  # model.heads > 1
            member["head"] = quantize_dynamic(member["head"], {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    # The quantised head holds packed weights, not parameters, so its device cannot be inferred.
    return q.place("cpu", "cpu")


def quantize_onnx_head(src: str | Path, dst: str | Path) -> Path:
    """onnxruntime dynamic int8 quantisation of an exported head (LSTM, MatMul/Gemm weights).

    7-bit weight range (``reduce_range``): on x86 CPUs without VNNI the u8 x s8 multiply-add sums
    pairs into int16 and can saturate with full-range weights. Measured on the quickstart model
    (AVX2, 96 validation videos): full range changed 2 predictions (-2.1 points), 7-bit none.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs advice for static (calibrated) quantisation to the root logger; it does
    # not apply to weight-only dynamic quantisation of a small head.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=True)
    finally:
        logging.disable(logging.NOTSET)
    return Path(dst)


def quantize_onnx_backbone(src: str | Path, dst: str | Path, frames: np.ndarray, *, batch: int = 16,
                           reduce_range: bool = True) -> Path:
    """onnxruntime static int8 quantisation of an exported backbone: QDQ, per-channel weights.

    Activation ranges come from running the fp32 backbone over ``frames`` (MinMax calibration);
    weights are int8 per output channel, activations uint8. ``reduce_range``: 7-bit weights, as for
    the head, because x86 CPUs without VNNI (the AVX2 EPYC machines) sum u8 x s8 products in pairs
    into int16, which can saturate with full-range weights.

    Args:
        src: fp32 ``backbone.onnx`` ((N, 3, S, S) frames -> (N, D) features).
        dst: where the int8 model goes.
        frames: (N, 3, S, S) float32 calibration frames, preprocessed as at inference
            (training videos through the eval transform).
        batch: frames per calibration call.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if frames.ndim != 4 or not len(frames):
        raise ValueError(f"calibration needs (N, 3, S, S) frames, got shape {frames.shape}")
    src, dst = Path(src), Path(dst)
    name = onnx_session(src).get_inputs()[0].name

    class Frames(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{name: np.ascontiguousarray(frames[i:i + batch], np.float32)}
                                  for i in range(0, len(frames), batch)])

        def get_next(self):
            return next(self._batches, None)

    prepared = dst.with_name(dst.stem + ".prep.onnx")  # shapes inferred and graph optimised, as ORT advises
    logging.disable(logging.WARNING)  # the quantiser's advice goes to the root logger
    try:
        quant_pre_process(str(src), str(prepared))
        quantize_static(str(prepared), str(dst), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        logging.disable(logging.NOTSET)
        prepared.unlink(missing_ok=True)
    return dst


@torch.inference_mode()
def collect_features(model: CNNLSTM, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features of every eval clip, computed once so head variants compare on equal input.

    Returns:
        (features (N, V, T, D) on the CPU, labels (N,)), V views per video.
    """
    model.eval()
    feats, labels = [], []
    for batch in loader:
        if batch["clip"] is None:
            continue
        clips = batch["clip"]  # (B, V, T, C, H, W)
        b, v, t = clips.shape[:3]
        f = model.clip_features(clips.flatten(0, 1))  # (B*V, T, D)
        feats.append(f.float().cpu().view(b, v, t, -1))
        labels.append(batch["label"])
    if not feats:
        raise ValueError("no evaluation clips could be decoded")
    return torch.cat(feats), torch.cat(labels)


def collect_onnx_features(encoders: dict[str, Callable[[np.ndarray], np.ndarray]], loader
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``collect_features`` for several frame encoders (e.g. fp32 and int8 ONNX backbones) in one pass.

    Args:
        encoders: name -> function (N, 3, S, S) float32 frames -> (N, D) features.

    Returns:
        ({name: (N, V, T, D) features}, labels (N,)).
    """
    feats: dict[str, list] = {k: [] for k in encoders}
    labels = []
    for batch in loader:
        if batch["clip"] is None:
            continue
        clips = batch["clip"]  # (B, V, T, C, H, W)
        b, v, t = clips.shape[:3]
        frames = clips.flatten(0, 2).numpy()  # (B*V*T, C, H, W)
        for name, encode in encoders.items():
            feats[name].append(torch.from_numpy(np.asarray(encode(frames), np.float32)).view(b, v, t, -1))
        labels.append(batch["label"])
    if not labels:
        raise ValueError("no evaluation clips could be decoded")
    return {k: torch.cat(f) for k, f in feats.items()}, torch.cat(labels)


def head_scores(head: Callable[[np.ndarray], np.ndarray], feats: torch.Tensor) -> np.ndarray:
    """(N, K) video scores: softmax of ``head`` logits averaged over each video's V views."""
    n, v = feats.shape[:2]
    logits = np.asarray(head(feats.flatten(0, 1).numpy()), np.float32).reshape(n, v, -1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).mean(1)


def torch_head(model: CNNLSTM) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.forward_head(torch.from_numpy(x)).numpy()
    return run


def onnx_head(path: str | Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX file with one input and one output (a head or a backbone) as a numpy function."""
    sess = onnx_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def median_ms(fn: Callable[[], object], *, iters: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def state_dict_bytes(module: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes
