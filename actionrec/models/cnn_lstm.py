"""CNN + temporal head: a timm backbone applied time-distributed, then a BiLSTM (or mean) head.

Layouts: input clips (B, T, C, H, W); the backbone sees (B*T, C, H, W) in ONE call (time folded
into the batch, so batch norm statistics and kernels see the whole clip batch), and returns
(B*T, D) features that are unfolded to (B, T, D) for the head. The one exception is a backbone in
eval mode on a CPU without gradients (feature extraction, testing), whose batch norm uses its running
statistics: it runs ``CPU_PIXELS_PER_CALL`` pixels of frames per call, the same features faster.

Model parallelism: ``place(cnn_device, head_device)`` puts the backbone and the head on different
devices; features move between them inside ``forward`` and logits come out on the head's device.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.models import group_parameters

from actionrec.models.heads import DROPOUT, LSTMHead, MeanHead, MotionCorrelation, TemporalContrast, TransformerHead, valid_mask

# A backbone in eval mode on a CPU, without gradients, sees at most this many pixels of frames per
# call (32 frames of 112 x 112, 8 of 224 x 224). One call over a whole test batch (4 videos x 9 views
# x 16 frames) streams activations of hundreds of MB through every batch norm and activation, which
# then took longer than the convolutions; in pieces that stay in the caches the bare timm
# mobilenet_v2 ran 1.9x faster at 112 px and 2x at 224 px, resnet18 1.3x at 224 px (2-core Xeon,
# docs/benchmarks.md). Each frame's features are its own in eval mode: the pieces give the same result.
CPU_PIXELS_PER_CALL = 32 * 112 * 112
ORDER_RADIUS = 2  # the motion correlation's reach in ``CNNLSTM.order_summary`` (data.reverse_pairs=auto)


def _load_state_dict(path: str | Path) -> dict:
    # weights_only: a weights file must never be able to run code.
    sd = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return OrderedDict((k.removeprefix("module."), v) for k, v in sd.items())


def map_torchvision_state_dict(tv_sd: dict, timm_model: nn.Module, path: str = "") -> dict:
    """Rename a torchvision ImageNet state dict to the keys of the equivalent timm model.

    timm ports of torchvision architectures (resnet*, mobilenetv2_100, ...) register the same
    tensors in the same order, so keys are matched by position and every shape is checked.
    """
    timm_sd = timm_model.state_dict()
    if len(tv_sd) != len(timm_sd):
        raise ValueError(
            f"{path}: {len(tv_sd)} tensors but the timm model has {len(timm_sd)}; "
            "is this the torchvision checkpoint of the same architecture?"
        )
    out = OrderedDict()
    for (tk, tv), (mk, mv) in zip(tv_sd.items(), timm_sd.items()):
        if tv.shape != mv.shape:
            raise ValueError(f"{path}: tensor '{tk}' {tuple(tv.shape)} does not fit timm '{mk}' {tuple(mv.shape)}")
        out[mk] = tv
    return out


def create_backbone(name: str, *, pretrained: str = "", pretrained_format: str = "auto") -> nn.Module:
    """A timm model with its classifier intact, weights optionally loaded from a local file.

    Args:
        name: any timm model name.
        pretrained: path to a timm- or torchvision-format checkpoint ('' for random init).
        pretrained_format: 'timm', 'torchvision', or 'auto' (torchvision when timm's keys don't match).
    """
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as e:  # timm raises RuntimeError('Unknown model ...')
        raise ValueError(f"model.backbone={name!r}: {e}") from None
    if pretrained:
        sd = _load_state_dict(pretrained)
        fmt = pretrained_format
        if fmt == "auto":
            fmt = "timm" if set(sd) == set(model.state_dict()) else "torchvision"
        if fmt == "torchvision":
            sd = map_torchvision_state_dict(sd, model, pretrained)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{pretrained}: does not match timm '{name}': missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def flip_cells(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """(..., channels * size * size) channel-major cells -> the same with each row of cells reversed
    (the left-right mirror image)."""
    return x.unflatten(-1, (channels, size, size)).flip(-1).flatten(-3)


def grid_cells(fmap: torch.Tensor, grid: int, *, channels_last: bool = False) -> torch.Tensor:
    """Average-pool a feature map to a ``grid`` x ``grid`` map in the same layout.

    (N, C, h, w) -> (N, C, grid, grid), or with ``channels_last`` (N, h, w, C) -> (N, grid, grid, C):
    ``F.adaptive_avg_pool2d`` written with explicit slices because the ONNX exporter cannot export
    adaptive pooling when the batch axis is dynamic. The cell bounds are adaptive pooling's (floor
    start, ceil end), so cells overlap when h or w is not a multiple of ``grid`` and repeat when h < grid.
    """
    hw = (1, 2) if channels_last else (-2, -1)
    h, w = int(fmap.shape[hw[0]]), int(fmap.shape[hw[1]])
    rows = [(i * h // grid, -(-(i + 1) * h // grid)) for i in range(grid)]
    cols = [(j * w // grid, -(-(j + 1) * w // grid)) for j in range(grid)]
    if channels_last:
        cells = [torch.stack([fmap[:, r0:r1, c0:c1].mean(dim=hw) for c0, c1 in cols], 1) for r0, r1 in rows]
        return torch.stack(cells, 1)  # (N, grid, grid, C)
    cells = [torch.stack([fmap[..., r0:r1, c0:c1].mean(dim=hw) for c0, c1 in cols], -1) for r0, r1 in rows]
    return torch.stack(cells, -2)  # (N, C, grid, grid)


def grid_pool(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C * grid**2): ``F.adaptive_avg_pool2d(fmap, grid).flatten(1)``."""
    return grid_cells(fmap, grid).flatten(1)


def feature_map_layout(backbone: nn.Module) -> str:
    """'NHWC' for timm models whose ``forward_features`` is channels-last (Swin, MambaOut, ...), else 'NCHW'.

    timm marks those models with ``output_fmt = 'NHWC'``; pooling their maps over the last two axes
    would average over width and channels instead of height and width.
    """
    fmt = getattr(backbone, "output_fmt", "NCHW")
    return str(getattr(fmt, "value", fmt)).upper()


def _is_nhwc(fmap: torch.Tensor, channels: int) -> bool:
    """Whether a hooked stage's (N, ., ., .) output is channels-last (some timm backbones emit NHWC stages)."""
    return fmap.shape[-1] == channels and fmap.shape[1] != channels


def _temporal_head(temporal: str, in_dim: int, num_classes: int, head_kwargs: dict, *, extra_dim: int = 0) -> nn.Module:
    """``model.temporal``'s head over (B, T, in_dim) steps; ``extra_dim`` clip-level inputs join its pooled output."""
    if temporal == "lstm":
        return LSTMHead(in_dim, num_classes, extra_dim=extra_dim, **head_kwargs)
    if temporal == "transformer":
        return TransformerHead(in_dim, num_classes, hidden_size=head_kwargs.get("hidden_size", 128),
                               num_layers=head_kwargs.get("num_layers", 2), pooling=head_kwargs.get("pooling", "mean"),
                               dropout=head_kwargs.get("dropout", DROPOUT), extra_dim=extra_dim)
    if temporal == "none":
        return MeanHead(in_dim, num_classes, dropout=head_kwargs.get("dropout", DROPOUT))
    raise ValueError(f"temporal must be 'lstm', 'transformer' or 'none', got {temporal!r}")


def _loaded_active_head(model: "CNNLSTM", _keys) -> None:
    """After ``load_state_dict``: the head in training is the checkpoint's (``active_head``)."""
    model.train_head(int(model.active_head))


class _StageHook:
    """Forward hook that keeps a backbone stage's output in ``owner._stage_out[option]``.

    An object rather than a lambda over the model: ``copy.deepcopy`` of the model (``quantize_head``:
    the int8 demo, server and export) copies it with the model, so the copy's hooks fill the copy's
    dict. A lambda is not copied and would keep writing into the original's.
    """

    def __init__(self, owner: "CNNLSTM", option: str):
        self.owner, self.option = owner, option

    def __call__(self, _module: nn.Module, _inputs, out: torch.Tensor) -> None:
        self.owner._stage_out[self.option] = out


class CNNLSTM(nn.Module):
    """Time-distributed timm CNN + temporal head.

    Args:
        backbone: a timm model (its classifier is removed with ``reset_classifier``).
        num_classes: output classes.
        temporal: 'lstm' (LSTMHead), 'transformer' (TransformerHead) or 'none' (frame-averaging
            MeanHead baseline).
        feature_grid: 1 uses the backbone's own global pooling; N > 1 average-pools the last
            feature map to an N x N grid (channels-first or channels-last maps alike), runs the
            backbone's pre-logits layers on each cell and flattens (D * N^2 features per frame), so
            the head sees where things are, not only what (e.g. left-to-right motion). Backbones
            with a 2-D feature map only (CNNs, Swin-like models; not ViT token sequences).
        head_kwargs: passed to the head (hidden_size, num_layers, bidirectional, lstm_dropout,
            pooling, dropout).
        freeze_backbone: no gradients into the backbone and its batch norm kept in eval mode.
        freeze_stages: freeze the stem and the first N stages only.
        grad_checkpointing: trade compute for activation memory in the backbone.
        channels_last: NHWC memory format for the backbone (faster convs on recent GPUs/CPUs).
        motion: 'none'; 'add' or 'only': the head also (or only) sees ``MotionCorrelation``
            features of consecutive frames, computed from the backbone's stride-8 feature map
            (timm's ``feature_info``), average-pooled to ``motion_map`` x ``motion_map``. Each
            frame's feature vector then carries that map (C * motion_map^2 values after the
            pooled features), so frames stay independent for the feature cache, the streaming
            demo and ONNX export; the correlation runs in ``forward_head``.
        motion_map: side of the pooled map the correlation runs on.
        motion_softmax: ``MotionCorrelation``'s temperature (0: raw cosine similarities).
        motion_radius: ``MotionCorrelation``'s reach in map cells each way (a stride-8 map: 8
            pixels of the crop per cell). ``order_summary`` keeps radius 2 whatever it is.
        contrast: width of a ``TemporalContrast`` branch (0: none): the end-minus-start change of
            the frames' mid-level appearance (the channel means of the deepest stride-16 stage,
            appended to each frame's features) joins the temporal head's pooled output. With
            ``motion='only'`` it is how the head still sees *what* is there, in order (an object
            that appears vs one that vanishes). Mid-level rather than the pooled features: on the
            real-footage set it separated those twins better (docs/real_footage.md). LSTM and transformer heads
            only: the frame-averaging baseline stays order-blind.
        contrast_grid: 1: the contrast reads the stride-16 stage's channel means; N > 1: also that
            map average-pooled to N x N cells (``grid_cells``), so a change in one part of the frame
            (an actor rising, popping up in a corner) is not averaged away by the whole scene.
            Each frame then carries C * (1 + N^2) values for it.
        heads: N > 1: a seed ensemble of N temporal heads over the same features (``members``):
            ``head``/``contrast``, then ``more_heads``. ``train_head(i)`` picks the one that trains
            (in training mode ``forward`` runs it alone); in eval mode ``forward`` averages the
            softmax of members 0..i, returned as its log (a valid logit vector: its softmax is the
            average), so every tool that reads logits reads the ensemble. ``active_head``, a buffer,
            keeps i in checkpoints.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        temporal: str = "lstm",
        feature_grid: int = 1,
        head_kwargs: dict | None = None,
        freeze_backbone: bool = False,
        freeze_stages: int = 0,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
        motion: str = "none",
        motion_map: int = 10,
        motion_softmax: float = 0.0,
        motion_radius: int = 2,
        contrast: int = 0,
        contrast_grid: int = 1,
        heads: int = 1,
    ):
        super().__init__()
        if motion not in ("none", "add", "only"):
            raise ValueError(f"motion must be none, add or only, got {motion!r}")
        if feature_grid < 1:
            raise ValueError(f"feature_grid must be >= 1, got {feature_grid}")
        self.feature_grid = feature_grid
        self.test_twins: list[int] | None = None  # set_test_twins (eval.reverse_views)
        self.reads_inputs = False  # forward of (B, T, .) tensors: features (forward_head) or head_inputs (read_head_inputs)
        # Grid pooling: timm's head without its global pool ('' pool type) still holds the layers
        # that follow pooling (MobileNetV3 conv_head 576 -> 1024, ConvNeXt head.norm, MambaOut's
        # MLP); they run on every grid cell, as they run on the pooled vector with grid 1. Calling
        # forward_features alone left them without gradients, which DDP refuses ("Expected to have
        # finished reduction in the prior iteration").
        if feature_grid > 1:
            backbone.reset_classifier(0, "")
        else:
            backbone.reset_classifier(0)
        self.backbone = backbone
        self.feature_layout = feature_map_layout(backbone)
        # timm's pre-logits width: head_hidden_size where a layer follows the pooling
        # (MobileNetV3: 1024), num_features otherwise; times the grid cells.
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.appearance_dim = width * feature_grid**2
        self.feature_dim = self.appearance_dim
        self.motion, self.motion_map = motion, motion_map
        # Stage outputs the hooks below catch during one backbone call (frame_features empties them).
        self._stage_out: dict[str, torch.Tensor] = {}
        head_in = self.appearance_dim
        if motion != "none":
            self._motion_channels = channels = self._hook_stage(8, "motion")
            self.motion_dim = channels * motion_map**2
            self.feature_dim += self.motion_dim
            self.motion_corr = MotionCorrelation(channels, motion_map, radius=motion_radius,
                                                 temperature=motion_softmax)
            # order_summary reads radius 2's raw similarities whatever the head's reach (the twin bars
            # were measured on them); parameter-free, so not in the state dict.
            self.order_corr = (self.motion_corr if motion_radius == ORDER_RADIUS
                               else MotionCorrelation(channels, motion_map, radius=ORDER_RADIUS))
            head_in = self.motion_corr.out_dim + (self.appearance_dim if motion == "add" else 0)
        self._build_contrast(contrast, contrast_grid, temporal)
        self.head = _temporal_head(temporal, head_in, num_classes, dict(head_kwargs or {}), extra_dim=contrast)
        self._build_more_heads(heads, lambda: _temporal_head(temporal, head_in, num_classes, dict(head_kwargs or {}),
                                                             extra_dim=contrast))
        self.num_classes = num_classes
        self.channels_last = channels_last
        self.cpu_pixels_per_call = CPU_PIXELS_PER_CALL  # frames_per_call; 0: one call whatever the size
        self._freeze(freeze_backbone, freeze_stages)
        if grad_checkpointing:
            self.backbone.set_grad_checkpointing(True)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.cnn_device: torch.device | None = None
        self.head_device: torch.device | None = None

    def _build_contrast(self, contrast: int, contrast_grid: int, temporal: str) -> None:
        """The ``contrast`` branch (see the class docstring): hook the stride-16 stage, widen the features."""
        if contrast < 0 or (contrast and temporal == "none"):
            raise ValueError(f"contrast={contrast}: must be >= 0, and needs an order-aware head (temporal lstm or "
                             "transformer): the frame-averaging baseline must stay order-blind")
        if contrast_grid < 1:
            raise ValueError(f"contrast_grid must be >= 1, got {contrast_grid}")
        self.contrast, self.contrast_grid = None, contrast_grid
        if contrast:
            self.contrast_channels = self._hook_stage(16, "contrast")
            # The stride-16 part of each frame's features: channel means, then (grid > 1) the cells.
            self.contrast_dim = self.contrast_channels * (1 + (contrast_grid**2 if contrast_grid > 1 else 0))
            self.feature_dim += self.contrast_dim
            self.contrast = TemporalContrast(self.contrast_dim, contrast)

    def _freeze(self, freeze_backbone: bool, freeze_stages: int) -> None:
        """No gradients into the whole backbone, or into its stem and first ``freeze_stages`` stages."""
        self.frozen_groups: list[int] = []
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.frozen_groups = [-1]
        elif freeze_stages > 0:
            groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=True))
            params = dict(self.backbone.named_parameters())
            for gid in sorted(groups)[: freeze_stages + 1]:  # group 0 is the stem
                for n in groups[gid]:
                    params[n].requires_grad_(False)
            self.frozen_groups = sorted(groups)[: freeze_stages + 1]

    def _build_more_heads(self, heads: int, new_head) -> None:
        """``heads`` > 1: ``more_heads``, the members after the first, each a ``ModuleDict`` of a new
        head (``new_head()``) and its own contrast branch. They are initialised from a fork of the
        global RNG, so building them draws nothing from it: the first member, the twin search's scouts
        and every later draw are those of the same model with one head."""
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.more_heads = nn.ModuleList()
        self._active = 0
        if heads == 1:
            return
        with torch.random.fork_rng(devices=[]):
            for _ in range(heads - 1):
                member = nn.ModuleDict({"head": new_head()})
                if self.contrast is not None:
                    member["contrast"] = TemporalContrast(self.contrast_dim, self.contrast.out_dim)
                self.more_heads.append(member)
        self.register_buffer("active_head", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_post_hook(_loaded_active_head)

    def members(self) -> list[tuple[nn.Module, nn.Module | None]]:
        """The (temporal head, contrast branch or None) pairs: ``head``/``contrast``, then ``more_heads``."""
        more = [(m["head"], m["contrast"] if "contrast" in m else None) for m in self.more_heads]
        return [(self.head, self.contrast)] + more

    def train_head(self, index: int) -> "CNNLSTM":
        """Member ``index`` trains from now on (training-mode ``forward`` runs it alone); eval-mode
        ``forward`` averages members 0..``index``. Returns self."""
        if not 0 <= index < len(self.members()):
            raise ValueError(f"head {index} of a model with {len(self.members())} heads")
        self._active = index
        if self.more_heads:
            self.active_head.fill_(index)
        return self

    def _hook_stage(self, stride: int, option: str) -> int:
        """Catch the output of the deepest backbone stage with output stride <= ``stride`` (timm's
        ``feature_info``) in ``_stage_out[option]`` at every backbone call; returns its channels."""
        info = [f for f in getattr(self.backbone, "feature_info", []) if isinstance(f, dict) and f.get("reduction", 99) <= stride]
        if not info:
            raise ValueError(f"model.{option} needs a CNN backbone with a stride-{stride} stage in timm's feature_info; "
                             f"{type(self.backbone).__name__} has none")
        stage = self.backbone.get_submodule(info[-1]["module"])
        stage.register_forward_hook(_StageHook(self, option))
        return int(info[-1]["num_chs"])

    @property
    def backbone_frozen(self) -> bool:
        return self.frozen_groups == [-1]

    def train(self, mode: bool = True) -> "CNNLSTM":
        super().train(mode)
        if self.backbone_frozen:
            # A frozen backbone keeps its pretrained batch-norm statistics.
            self.backbone.eval()
        return self

    def place(self, cnn_device: torch.device | str, head_device: torch.device | str) -> "CNNLSTM":
        """Model-parallel placement: backbone on ``cnn_device``; everything ``forward_head`` runs (the
        temporal head, the contrast branch, the motion correlation's index buffers; ``active_head``,
        which DDP broadcasts with the rest: NCCL takes no CPU tensor) on ``head_device``."""
        self.cnn_device, self.head_device = torch.device(cnn_device), torch.device(head_device)
        for name, child in self.named_children():
            child.to(self.cnn_device if name == "backbone" else self.head_device)
        for name, buf in self.named_buffers(recurse=False):
            self._buffers[name] = buf.to(self.head_device)
        return self

    @property
    def input_device(self) -> torch.device:
        return self.cnn_device or next(self.backbone.parameters()).device

    @property
    def output_device(self) -> torch.device:
        return self.head_device or next(self.head.parameters()).device

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) frames -> (N, D) features: the pooled features, then (with ``motion``) the
        flattened stride-8 map pooled to ``motion_map`` x ``motion_map``, then (with ``contrast``)
        the stride-16 map's channel means and (``contrast_grid`` > 1) its cells. One backbone call,
        or ``CPU_PIXELS_PER_CALL`` pixels of frames per call (``frames_per_call``)."""
        n = self.frames_per_call(frames)
        if n < frames.shape[0]:
            return torch.cat([self._frame_features(part) for part in frames.split(n)])
        return self._frame_features(frames)

    def frames_per_call(self, frames: torch.Tensor) -> int:
        """How many of ``frames`` one backbone call takes: all of them, except without gradients for a
        backbone in eval mode on a CPU (batch norm on running statistics: each frame's features are its
        own; the feature cache's extraction, testing), which takes ``cpu_pixels_per_call`` pixels' worth.
        With gradients one call: Grad-CAM's hooks and torch-pruning's graph read one activation per
        layer. Tracing and compiling see one call too."""
        n = frames.shape[0]
        if (not self.cpu_pixels_per_call or torch.is_grad_enabled() or self.backbone.training
                or self.input_device.type != "cpu" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling()):
            return n
        return max(1, self.cpu_pixels_per_call // (frames.shape[-2] * frames.shape[-1]))

    def _frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        if self.motion == "none" and self.contrast is None:
            return self._pooled_features(frames)
        self._stage_out.clear()
        parts = [self._pooled_features(frames)]
        outs, self._stage_out = self._stage_out, {}
        if self.motion != "none":
            fmap = outs["motion"]
            nhwc = _is_nhwc(fmap, self._motion_channels)
            maps = grid_cells(fmap.float(), self.motion_map, channels_last=nhwc)
            if nhwc:
                maps = maps.permute(0, 3, 1, 2)
            parts.append(maps.flatten(1))
        if self.contrast is not None:
            fmap = outs["contrast"].float()
            nhwc = _is_nhwc(fmap, self.contrast_channels)
            parts.append(fmap.mean(dim=(1, 2) if nhwc else (2, 3)))
            if self.contrast_grid > 1:
                cells = grid_cells(fmap, self.contrast_grid, channels_last=nhwc)
                parts.append((cells.permute(0, 3, 1, 2) if nhwc else cells).flatten(1))
        return torch.cat([p.to(parts[0].dtype) for p in parts], 1)

    def _pooled_features(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self.input_device, non_blocking=True)
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        if self.feature_grid == 1:
            return self.backbone(frames)
        fmap = self.backbone.forward_features(frames)
        if fmap.dim() != 4:
            raise ValueError(
                f"feature_grid={self.feature_grid} needs a CNN feature map (N, C, H, W); "
                f"{type(self.backbone).__name__} gives shape {tuple(fmap.shape)}"
            )
        nhwc = self.feature_layout == "NHWC"
        cells = grid_cells(fmap, self.feature_grid, channels_last=nhwc)
        cells = self.backbone.forward_head(cells, pre_logits=True)  # the head's layers per cell, same layout
        if nhwc:
            cells = cells.permute(0, 3, 1, 2)  # (N, g, g, D) -> (N, D, g, g)
        return cells.flatten(1)  # (N, D * g * g), channel-major

    def clip_features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) clips -> (B, T, D) features."""
        b, t = clips.shape[:2]
        feats = self.frame_features(clips.flatten(0, 1))  # (B*T, C, H, W) -> (B*T, D)
        return feats.view(b, t, -1)

    def forward_head(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) features -> (B, num_classes) logits on the head's device.

        The head always runs in fp32 outside autocast: it is a small fraction of the compute, the
        recurrence accumulates rounding error over time steps, and oneDNN has no bf16 LSTM
        primitive on CPUs without native bf16 (it raises instead of falling back).
        """
        feats = feats.to(self.output_device, non_blocking=True).float()
        with torch.autocast(device_type=feats.device.type, enabled=False):
            logits = self._head_of_features(feats, lengths)
            if self._reverses(lengths):
                logits = self._with_backwards(logits, self._head_of_features(feats.flip(1), lengths))
            return logits

    def _head_of_features(self, feats: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        motion = self.motion_corr(self._motion_maps(feats)) if self.motion != "none" else None
        return self._head(feats, motion, lengths)

    # Test-time reversal (eval.reverse_views): a clip of class c played backwards is a clip of c's
    # time-reversed twin, so the head's answer for the clip backwards is a second opinion on c.

    def set_test_twins(self, twins: Sequence[int] | None) -> "CNNLSTM":
        """Test-time reversal (``eval.reverse_views``): ``twins[c]`` is the class whose label a clip of
        class c takes when played backwards (its time-reversed twin, or c itself for a class that is
        the same either way), -1 for a class without one (``data.reverse_pairs``). In eval mode
        ``forward_head`` and ``forward_inputs`` then also run every whole clip (no ``lengths``) played
        backwards, and a class with a twin scores the mean of the clip's softmax for it and the
        backwards clip's softmax for its twin, renormalised (a class without one keeps its own
        share); the result is returned as its log, as the heads' ensemble is. None turns it off.
        Training is unchanged. Returns self."""
        if twins is not None:
            twins = [int(t) for t in twins]
            if len(twins) != self.num_classes or any(not -1 <= t < self.num_classes for t in twins):
                raise ValueError(f"test twins must be {self.num_classes} class indices or -1, got {twins}")
            if all(t < 0 for t in twins):
                twins = None
        self.test_twins = twins
        return self

    def _reverses(self, lengths: torch.Tensor | None) -> bool:
        return self.test_twins is not None and not self.training and lengths is None

    def _with_backwards(self, logits: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
        """(B, K) logits of clips and of the same clips played backwards -> the log of their
        combined softmax (``set_test_twins``)."""
        twin = torch.tensor(self.test_twins, device=logits.device)
        # In log space, as the heads' ensemble: a softmax that underflows to 0 gives no -inf here.
        own, back = logits.log_softmax(-1), back.log_softmax(-1)[:, twin.clamp_min(0)]
        q = torch.where(twin >= 0, torch.stack([own, back]).logsumexp(0) - math.log(2), own)
        return q - q.logsumexp(-1, keepdim=True)

    def _motion_maps(self, feats: torch.Tensor) -> torch.Tensor:
        a = self.appearance_dim
        return feats[..., a : a + self.motion_dim]

    def _head(self, feats: torch.Tensor, motion: torch.Tensor | None, lengths: torch.Tensor | None) -> torch.Tensor:
        """The trainable part: ``feats``' appearance and contrast parts (any layout ending with the
        contrast, as ``frame_features`` and ``head_inputs`` do) and the motion correlation."""
        # Layout (frame_features): appearance | motion map (motion) | stride-16 means [+ cells] (contrast).
        head_in = feats[..., : self.appearance_dim]
        if motion is not None:
            head_in = motion if self.motion == "only" else torch.cat([head_in, motion], -1)
        if self.contrast is not None:
            b, t = feats.shape[:2]
            state, mask = feats[..., -self.contrast_dim :], valid_mask(lengths, b, t, feats.device)
        members = self.members()
        members = members[self._active : self._active + 1] if self.training else members[: self._active + 1]
        logits = [head(head_in, lengths) if contrast is None else head(head_in, lengths, contrast(state, mask))
                  for head, contrast in members]
        if len(logits) == 1:
            return logits[0]
        # The members' mean softmax, as its log: softmax of it gives the mean back.
        return torch.stack([z.log_softmax(-1) for z in logits]).logsumexp(0) - math.log(len(logits))

    # Head inputs: what forward_head computes from cached features before anything trainable runs (the
    # motion correlation; 2/3 of a head step on a CPU), computed once per cached clip instead of every
    # epoch (train.cache_features). Each frame's row: appearance | correlation with the next frame |
    # correlation with the previous frame | contrast part; the second correlation makes playing the
    # clip backwards a reordering (reverse_inputs), as the mirror is one (mirror_inputs).

    def head_inputs(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., T, D) features -> (..., T, H) head inputs, fp32 on the features' device
        (``forward_inputs`` of them equals ``forward_head`` of the features). Without motion they are
        the features."""
        if self.motion == "none":
            return feats
        lead, (t, d) = feats.shape[:-2], feats.shape[-2:]
        x = feats.reshape(-1, t, d).to(self.output_device).float()
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            maps = self._motion_maps(x)
            nxt = self.motion_corr(maps)
            prev = self.motion_corr(maps.flip(1)).flip(1)  # frame t against frame t - 1; zeros at t = 0
            a = self.appearance_dim
            out = torch.cat([x[..., :a], nxt, prev, x[..., a + self.motion_dim :]], -1)
        return out.reshape(*lead, t, out.shape[-1]).to(feats.device)

    def forward_inputs(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) ``head_inputs`` -> (B, num_classes) logits, as ``forward_head`` of their features."""
        inputs = inputs.to(self.output_device, non_blocking=True).float()
        if self.motion == "none":
            return self.forward_head(inputs, lengths)
        a, m = self.appearance_dim, self.motion_corr.out_dim
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            logits = self._head(inputs, inputs[..., a : a + m], lengths)
            if self._reverses(lengths):
                back = self.reverse_inputs(inputs)
                logits = self._with_backwards(logits, self._head(back, back[..., a : a + m], lengths))
            return logits

    def read_head_inputs(self, on: bool = True) -> "CNNLSTM":
        """From now on ``forward`` takes (B, T, H) tensors as ``head_inputs``, not features (the
        feature cache's loaders hold head inputs); clips of frames are unaffected. Returns self."""
        self.reads_inputs = on
        return self

    def reverse_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """(..., T, H) head inputs -> those of the clip played backwards: time flipped, and each
        frame's correlations with the next and the previous frame swapped."""
        if self.motion == "none":
            return inputs.flip(-2)
        a, m = self.appearance_dim, self.motion_corr.out_dim
        x = inputs.flip(-2)
        return torch.cat([x[..., :a], x[..., a + m : a + 2 * m], x[..., a : a + m], x[..., a + 2 * m :]], -1)

    def mirror_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """(..., T, H) head inputs -> those of the frames flipped left-right (``mirror_features``,
        with the correlations mirrored: exactly what they are for the mirrored maps)."""
        if self.motion == "none":
            return self.mirror_features(inputs)
        a, m = self.appearance_dim, self.motion_corr.out_dim
        parts = [self._mirror_appearance(inputs[..., :a]), self.motion_corr.mirror(inputs[..., a : a + m]),
                 self.motion_corr.mirror(inputs[..., a + m : a + 2 * m])]
        if self.contrast is not None:
            parts.append(self._mirror_contrast(inputs[..., a + 2 * m :]))
        return torch.cat(parts, -1)

    def mirror_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., D) per-frame features -> the features of the frames flipped left-right, in feature
        space (``data.mirror_pairs`` on cached features): every spatial part of the layout
        (``frame_features``) is mirrored: the stride-8 map (so the motion correlation of two mirrored
        maps is exactly the correlation mirrored: displacement dx becomes -dx, the grid's columns swap),
        the contrast's cells and the appearance grid cells (``feature_grid`` > 1). Pooled vectors (the
        appearance with grid 1, the contrast's channel means) are kept: for them the mirrored frame's
        values are not computable from the cache, and a CNN trained with flips (ImageNet's) gives
        nearly the same pooled features for a frame and its mirror image."""
        at = self.appearance_dim
        parts = [self._mirror_appearance(feats[..., :at])]
        if self.motion != "none":
            parts.append(flip_cells(feats[..., at : at + self.motion_dim], self._motion_channels, self.motion_map))
            at += self.motion_dim
        if self.contrast is not None:
            parts.append(self._mirror_contrast(feats[..., at:]))
        return torch.cat(parts, -1)

    def _mirror_appearance(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_grid == 1:
            return x
        return flip_cells(x, self.appearance_dim // self.feature_grid**2, self.feature_grid)

    def _mirror_contrast(self, x: torch.Tensor) -> torch.Tensor:
        c = self.contrast_channels
        if self.contrast_grid == 1:
            return x
        return torch.cat([x[..., :c], flip_cells(x[..., c:], c, self.contrast_grid)], -1)

    @torch.no_grad()
    def order_summary(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, D) features -> (B, S) parameter-free clip summaries that change when the clip is
        played backwards (``data.reverse_pairs=auto`` compares clips and reversed clips with them):
        the time mean of the motion correlation (motion models) and the change of the stride-16
        channel means (contrast models; else of the appearance features) from the first quarter of the
        clip to the last. On the head's device, like ``forward_head``."""
        feats = feats.to(self.output_device).float()
        a, q = self.appearance_dim, max(1, feats.shape[1] // 4)
        parts = []
        if self.motion != "none" and feats.shape[1] > 1:
            # Raw radius-2 similarities whatever model.motion_softmax and motion_radius: the twin bars
            # were measured on them.
            parts.append(self.order_corr(feats[..., a : a + self.motion_dim], raw=True)[:, :-1].mean(1))
        if self.contrast is not None:  # the channel means (not the cells: what the twin bars were measured on)
            state = feats[..., -self.contrast_dim :][..., : self.contrast_channels]
        else:
            state = feats[..., :a]
        parts.append(state[:, -q:].mean(1) - state[:, :q].mean(1))
        return torch.cat(parts, -1)

    def forward(self, clips: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C, H, W) clips, or (B, T, D) backbone features (the frozen-backbone feature
        cache; ``head_inputs`` after ``read_head_inputs``), -> (B, num_classes) logits."""
        if clips.dim() == 3:
            return self.forward_inputs(clips, lengths) if self.reads_inputs else self.forward_head(clips, lengths)
        return self.forward_head(self.clip_features(clips), lengths)
