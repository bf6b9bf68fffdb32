"""``create_model``: model family name -> constructor (one family: a plain function, no registry)."""

from __future__ import annotations

import torch.nn as nn

from actionrec.models.cnn_lstm import CNNLSTM, create_backbone
from actionrec.models.heads import DROPOUT

# The temporal head's keywords and the defaults create_model gives every head (the transformer and
# frame-average heads read the ones they use; see ``CNNLSTM``).
HEAD_DEFAULTS = dict(hidden_size=512, num_layers=2, bidirectional=True, lstm_dropout=0.2, pooling="attention",
                     dropout=DROPOUT)


def _cnn_lstm(*, num_classes: int, backbone: str = "resnet18", pretrained: str = "", pretrained_format: str = "auto",
              **kwargs) -> CNNLSTM:
    """A timm ``backbone`` and a temporal head; ``kwargs``: the head's (``HEAD_DEFAULTS``) and ``CNNLSTM``'s keywords."""
    head_kwargs = {k: kwargs.pop(k, default) for k, default in HEAD_DEFAULTS.items()}
    cnn = create_backbone(backbone, pretrained=pretrained, pretrained_format=pretrained_format)
    return CNNLSTM(cnn, num_classes, head_kwargs=head_kwargs, **kwargs)


def create_model(family: str = "cnn_lstm", **kwargs) -> nn.Module:
    """Build a model of ``family`` (only 'cnn_lstm' so far) with explicit keyword arguments.

    Args:
        family: the model family.
        **kwargs: ``num_classes``; the backbone's ``backbone``, ``pretrained``, ``pretrained_format``
            (``cnn_lstm.create_backbone``); the head's ``HEAD_DEFAULTS`` keys; the rest go to ``CNNLSTM``
            (temporal, feature_grid, freeze_backbone, freeze_stages, grad_checkpointing, channels_last,
            motion, motion_map, motion_softmax, motion_radius, contrast, contrast_grid).
    """
    if family != "cnn_lstm":
        raise ValueError(f"unknown model family {family!r}; choose from ['cnn_lstm']")
    return _cnn_lstm(**kwargs)
