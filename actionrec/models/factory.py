"""``create_model``: model family name -> constructor (one family: a plain function, no registry)."""

from __future__ import annotations

import torch.nn as nn

from actionrec.models.cnn_lstm import CNNLSTM, create_backbone
from actionrec.models.heads import DROPOUT


def _cnn_lstm(
    *,
    num_classes: int,
    backbone: str = "resnet18",
    pretrained: str = "",
    pretrained_format: str = "auto",
    temporal: str = "lstm",
    hidden_size: int = 512,
    num_layers: int = 2,
    bidirectional: bool = True,
    lstm_dropout: float = 0.2,
    pooling: str = "attention",
    feature_grid: int = 1,
    dropout: float = DROPOUT,
    freeze_backbone: bool = False,
    freeze_stages: int = 0,
    grad_checkpointing: bool = False,
    channels_last: bool = False,
    motion: str = "none",
    motion_map: int = 10,
) -> CNNLSTM:
    cnn = create_backbone(backbone, pretrained=pretrained, pretrained_format=pretrained_format)
    head_kwargs = dict(
        hidden_size=hidden_size,
        num_layers=num_layers,
        bidirectional=bidirectional,
        lstm_dropout=lstm_dropout,
        pooling=pooling,
        dropout=dropout,
    )
    return CNNLSTM(
        cnn,
        num_classes,
        temporal=temporal,
        feature_grid=feature_grid,
        head_kwargs=head_kwargs,
        freeze_backbone=freeze_backbone,
        freeze_stages=freeze_stages,
        grad_checkpointing=grad_checkpointing,
        channels_last=channels_last,
        motion=motion,
        motion_map=motion_map,
    )


def create_model(family: str = "cnn_lstm", **kwargs) -> nn.Module:
    """Build a model of ``family`` (only 'cnn_lstm' so far) with explicit keyword arguments."""
    if family != "cnn_lstm":
        raise ValueError(f"unknown model family {family!r}; choose from ['cnn_lstm']")
    return _cnn_lstm(**kwargs)
