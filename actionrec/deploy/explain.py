"""Why a label: Grad-CAM over a clip's frames, attention-pooling weights, probability timelines.

Grad-CAM (Selvaraju et al., ICCV 2017): the gradient of a class logit with respect to a feature
map, averaged over space, weights the map's channels; the ReLU of the weighted sum shows where
in the frame the evidence for that class is. The map used is the one the backbone's
``forward_features`` returns (the last 4-D map, before global or grid pooling), found by running
the backbone once with forward hooks on every submodule and taking the last module whose output
*is* that tensor (``layer4`` in ResNets, ``norm_pre`` in ConvNeXt, ``blocks`` in MobileNetV3...):
no layer name is hard-coded, so any timm CNN (or channels-last Swin-like model) works. ViT-style
token sequences have no 2-D map and are refused.

The gradient flows through the temporal head, so a frame's heatmap is its evidence for the clip's
label in the context of the other frames. Explanations run in fp32 with the model in eval mode
(dropout off, batch-norm statistics frozen), the head with cuDNN off: cuDNN's LSTM has no backward
pass in eval mode. Gradients are taken with ``torch.autograd.grad``, so the
model's parameters get no ``.grad``.

Attention weights come from a forward hook on the head's ``AdditiveAttention`` (pooling=attention).
The timeline runs the ``StreamingClassifier`` over a whole video, as the demo does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from actionrec.deploy.backends import TorchBackend
from actionrec.deploy.overlay import draw_heatmap
from actionrec.deploy.streaming import StreamingClassifier, iter_frames
from actionrec.errors import UsageError


def feature_map_module(backbone: nn.Module, sample: torch.Tensor) -> tuple[str, nn.Module]:
    """The submodule whose output is the feature map ``backbone.forward_features`` returns.

    Args:
        backbone: a timm model.
        sample: (N, C, H, W) input on the backbone's device (one frame is enough).

    Returns:
        (dotted module name, module).

    Raises:
        UsageError (a ValueError): the map is not 4-D (ViT tokens) or no submodule produces it (a functional last op).
    """
    calls: list[tuple[nn.Module, object]] = []
    names = {id(m): n for n, m in backbone.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, _inp, out: calls.append((mod, out)))
             for m in backbone.modules() if m is not backbone]
    try:
        with torch.no_grad():
            fmap = backbone.forward_features(sample)
    finally:
        for h in hooks:
            h.remove()
    kind = type(backbone).__name__
    if not torch.is_tensor(fmap) or fmap.dim() != 4:
        shape = tuple(fmap.shape) if torch.is_tensor(fmap) else type(fmap).__name__
        raise UsageError(f"Grad-CAM needs a 2-D feature map (N, C, H, W); {kind}.forward_features gives {shape}")
    for mod, out in reversed(calls):
        if out is fmap:
            return names[id(mod)], mod
    raise UsageError(f"Grad-CAM: no submodule of {kind} outputs the map forward_features returns")


@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Gradients on, fp32, no activation checkpointing."""
    # timm keeps the checkpointing flag on the model (ResNet) or on its stages (ConvNeXt). Recomputation
    # would re-fire the hooks, and reentrant checkpoints keep inner activations out of the graph.
    checkpointed = [m for m in model.backbone.modules() if getattr(m, "grad_checkpointing", False) is True]
    for m in checkpointed:
        m.grad_checkpointing = False
    try:
        with torch.enable_grad(), torch.autocast(device_type=model.input_device.type, enabled=False):
            yield
    finally:
        for m in checkpointed:
            m.grad_checkpointing = True


def _head_logits(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """(B, T, D) features -> (B, K) logits with cuDNN off: its LSTM has no backward pass in eval mode."""
    with torch.backends.cudnn.flags(enabled=False):
        return model.forward_head(feats)


def _cam(act: torch.Tensor, grad: torch.Tensor, nhwc: bool) -> torch.Tensor:
    """Grad-CAM of (N, C, h, w) activations and their gradients -> (N, h, w), not normalised."""
    if nhwc:  # (N, h, w, C) -> (N, C, h, w)
        act, grad = act.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)
    weights = grad.float().mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1): channel importance
    return F.relu((weights * act.float()).sum(1))


def _upsample(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class _Capture:
    """Forward hooks: the target layer's latest output, and the attention weights (if any; with
    ``model.heads`` > 1 their mean over the heads that ran; with ``eval.reverse_views`` the heads ran
    on the clip and then on the clip played backwards, whose weights are flipped back onto the frames)."""

    def __init__(self, model: nn.Module, layer: nn.Module):
        self.act: torch.Tensor | None = None
        self._attention: list[torch.Tensor] = []
        self._backwards = getattr(model, "test_twins", None) is not None  # CNNLSTM.set_test_twins
        self._hooks = [layer.register_forward_hook(self._keep_act)]
        members = model.members() if hasattr(model, "members") else [(model.head, None)]
        for head, _ in members:
            attention = getattr(head, "attention", None)
            if attention is not None:
                self._hooks.append(attention.register_forward_hook(self._keep_attention))

    @property
    def attention(self) -> torch.Tensor | None:
        if not self._attention:
            return None
        runs, half = self._attention, len(self._attention) // 2
        if self._backwards and half:  # the second half ran on the clip played backwards
            runs = runs[:half] + [w.flip(-1) for w in runs[half:]]
        return torch.stack(runs).mean(0)

    def _keep_act(self, _mod, _inp, out) -> None:
        self.act = out

    def _keep_attention(self, _mod, _inp, out) -> None:
        self._attention.append(out[1].detach())  # AdditiveAttention returns (pooled, weights (B, T))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


@dataclass
class ClipExplanation:
    """Grad-CAM and attention of one clip for one class.

    Attributes:
        class_index: the explained class.
        probs: (K,) softmax of the clip's logits.
        cams: (T, H, W) heatmaps at the clip's input size, in [0, 1] (divided by the clip's maximum,
            so frames compare: a frame with little evidence stays dark).
        cams_lowres: (T, h, w) the same at feature-map resolution.
        attention: (T,) attention-pooling weights (sum 1), or None when pooling is not attention.
        layer: name of the hooked backbone module.
    """

    class_index: int
    probs: np.ndarray
    cams: np.ndarray
    cams_lowres: np.ndarray
    attention: np.ndarray | None
    layer: str


def explain_clip(model: nn.Module, clip: torch.Tensor, class_index: int | None = None) -> ClipExplanation:
    """Grad-CAM of every frame of a clip, and the head's attention weights.

    Args:
        model: a ``CNNLSTM`` (any device; kept in eval mode).
        clip: (T, C, H, W) normalised frames (the eval transform's output).
        class_index: the class to explain; None: the predicted one.

    Returns:
        A ``ClipExplanation``.
    """
    model.eval()
    x = clip[None].to(model.input_device, torch.float32)  # (1, T, C, H, W)
    name, layer = feature_map_module(model.backbone, x[0, :1])
    capture = _Capture(model, layer)
    try:
        with _explaining(model):
            # The input requires grad so that the map is in the graph even with a frozen backbone.
            logits = _head_logits(model, model.clip_features(x.requires_grad_(True)))[0].float()  # (K,)
            c = int(logits.argmax()) if class_index is None else int(class_index)
            (grad,) = torch.autograd.grad(logits[c], capture.act)
    finally:
        capture.remove()
    low = _cam(capture.act.detach(), grad, getattr(model, "feature_layout", "NCHW") == "NHWC")  # (T, h, w)
    low = low / low.max().clamp_min(1e-12)
    cams = _upsample(low, tuple(clip.shape[-2:])).clamp_min(0)
    cams = cams / cams.max().clamp_min(1e-12)  # bilinear lowers the peak a little
    attention = capture.attention[0].float().cpu().numpy() if capture.attention is not None else None
    return ClipExplanation(class_index=c, probs=torch.softmax(logits.detach(), 0).cpu().numpy(),
                           cams=cams.cpu().numpy(), cams_lowres=low.cpu().numpy(), attention=attention, layer=name)


def overlay_frames(frames: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) RGB uint8 frames with their (T, H, W) heatmaps blended in (RGB uint8)."""
    out = []
    for rgb, cam in zip(frames, cams):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        out.append(cv2.cvtColor(draw_heatmap(bgr, cam), cv2.COLOR_BGR2RGB))
    return np.stack(out)


class GradCamBackend(TorchBackend):
    """``TorchBackend`` that keeps the newest frame's graph, to explain it in its window (the live demo).

    ``features`` runs the backbone with gradients for that one frame; ``newest_cam`` then runs the
    head over the window, older frames as constants, and returns the newest frame's Grad-CAM.
    One backbone pass per frame, as streaming without explanations, plus one backward.
    """

    def __init__(self, model, preprocess):
        super().__init__(model, preprocess)
        self._layer: tuple[str, nn.Module] | None = None
        self._last: tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None = None  # feature, map, input size

    def features(self, rgb: np.ndarray) -> np.ndarray:
        model = self.model
        x = torch.as_tensor(self.preprocess(rgb))[None].to(model.input_device, torch.float32)  # (1, 3, S, S)
        if self._layer is None:
            self._layer = feature_map_module(model.backbone, x)
        capture = _Capture(model, self._layer[1])
        try:
            with _explaining(model):
                feat = model.frame_features(x.requires_grad_(True))
        finally:
            capture.remove()
        self._last = (feat, capture.act, tuple(x.shape[-2:]))
        self.frames_encoded += 1
        return feat[0].detach().float().cpu().numpy()

    def newest_cam(self, window: np.ndarray, class_index: int | None = None) -> np.ndarray:
        """(S, S) Grad-CAM in [0, 1] of the frame last passed to ``features``.

        Args:
            window: (n, D) buffered features, oldest first, the newest frame's last.
            class_index: the class to explain; None: the window's top class.
        """
        if self._last is None:
            raise RuntimeError("newest_cam before any frame went through features()")
        feat, act, size = self._last
        model = self.model
        older = torch.from_numpy(np.ascontiguousarray(window[:-1], np.float32)).to(feat.device)
        with _explaining(model):
            feats = torch.cat([older, feat.float()], 0)[None]  # (1, n, D)
            logits = _head_logits(model, feats)[0]
            c = int(logits.argmax()) if class_index is None else int(class_index)
            (grad,) = torch.autograd.grad(logits[c], act)
        cam = _cam(act.detach(), grad, getattr(model, "feature_layout", "NCHW") == "NHWC")
        cam = _upsample(cam, size)[0].clamp_min(0)
        cam = cam / cam.max().clamp_min(1e-12)
        self._last = None  # free the graph
        return cam.cpu().numpy()


@dataclass
class Timeline:
    """Class probabilities over a whole video from the streaming classifier.

    Attributes:
        num_frames: frames in the video (every one read, sampled or not).
        frames: (P,) source index of the newest frame of each head run.
        window_starts: (P,) source index of the oldest frame of each window.
        probs: (P, K) smoothed probabilities (what the demo shows) per head run.
        top: (num_frames,) class shown at each frame (the latest head run's top-1), -1 before the first.
    """

    num_frames: int
    frames: np.ndarray
    window_starts: np.ndarray
    probs: np.ndarray
    top: np.ndarray

    def bands(self) -> list[tuple[int, int, int]]:
        """Runs of the same top class: (start frame, end frame exclusive, class index)."""
        out: list[tuple[int, int, int]] = []
        for f, c in enumerate(self.top.tolist()):
            if c < 0:
                continue
            if out and out[-1][2] == c and out[-1][1] == f:
                out[-1] = (out[-1][0], f + 1, c)
            else:
                out.append((f, f + 1, c))
        return out

    def to_json(self, class_names: Sequence[str]) -> dict:
        return {
            "num_frames": self.num_frames,
            "predictions": [{"frame": int(f), "window_start": int(s), "probs": [round(float(p), 5) for p in row]}
                            for f, s, row in zip(self.frames, self.window_starts, self.probs)],
            "top_per_frame": [class_names[c] if c >= 0 else None for c in self.top.tolist()],
            "bands": [{"label": class_names[c], "start": s, "end": e} for s, e, c in self.bands()],
        }


def stream_timeline(clf: StreamingClassifier, source, *, max_frames: int = 0) -> Timeline:
    """Run ``clf`` over every frame of ``source`` (``read() -> (ok, BGR frame)``, e.g. ``open_source``)."""
    frames, starts, probs, top = [], [], [], []
    current, count = -1, 0
    for index, bgr in iter_frames(source, max_frames=max_frames):
        count += 1
        if clf.wants(index):
            pred = clf.push(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index)
            if pred is not None:
                frames.append(pred.frame)
                starts.append(pred.window[0])
                probs.append(pred.probs)
                current = int(np.argmax(pred.probs))
        top.append(current)
    k = len(clf.class_names)
    return Timeline(num_frames=count, frames=np.asarray(frames, np.int64), window_starts=np.asarray(starts, np.int64),
                    probs=np.stack(probs) if probs else np.zeros((0, k), np.float32), top=np.asarray(top, np.int64))
