"""Motion correlation features, the transformer head, and the model built with them."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from actionrec.models.factory import create_model
from actionrec.models.heads import LSTMHead, MotionCorrelation, TransformerHead


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    yield


def _maps(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, C, S, S) -> the flattened (B, T, C*S*S) layout the head receives."""
    return frames.flatten(2)


def test_correlation_peaks_at_the_displacement_and_flips_when_reversed():
    torch.manual_seed(0)
    s, r = 12, 2
    base = torch.randn(1, 8, 20, 20)
    # Content moves 1 cell right and 2 down per frame: frame t is the base shifted by (2t, t).
    frames = torch.stack([base[:, :, 4 - 0 : 4 - 0 + s, 4 - 0 : 4 - 0 + s]] +
                         [torch.roll(base, (2 * t, t), (2, 3))[:, :, 4 : 4 + s, 4 : 4 + s] for t in range(1, 3)], 1)
    corr = MotionCorrelation(8, s, radius=r, grid=1)
    vol = corr(_maps(frames))  # (1, 3, 25)
    assert vol.shape == (1, 3, 25)
    best = int(vol[0, 0].argmax())
    dy, dx = best // (2 * r + 1) - r, best % (2 * r + 1) - r
    assert (dy, dx) == (2, 1)
    assert torch.all(vol[0, -1] == 0)  # the last step has no successor
    rev = corr(_maps(frames.flip(1)))
    best = int(rev[0, 0].argmax())
    assert (best // (2 * r + 1) - r, best % (2 * r + 1) - r) == (-2, -1)
    # Cosine similarities: the matching displacement scores ~1 inside the map (edges see padding).
    assert 0.6 < float(vol[0, 0].max()) <= 1.0 + 1e-5


def test_transformer_head_masks_padding_and_trains():
    torch.manual_seed(0)
    head = TransformerHead(10, 3, hidden_size=16, num_layers=2, pooling="mean", dropout=0.0).eval()
    x = torch.randn(2, 6, 10)
    lengths = torch.tensor([6, 4])
    out = head(x, lengths)
    x2 = x.clone()
    x2[1, 4:] = 1e3  # padding content must not matter
    torch.testing.assert_close(head(x2, lengths), out)
    torch.testing.assert_close(head(x[1:, :4]), out[1:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="positions"):
        head(torch.randn(1, 200, 10))
    with pytest.raises(ValueError, match="multiple of 4"):
        TransformerHead(10, 3, hidden_size=18)
    # Order matters to it (learned positions), unlike frame averaging.
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    seq = torch.randn(32, 6, 10)
    data = torch.cat([seq, seq.flip(1)])
    labels = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(head(data), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    assert (head(data).argmax(1) == labels).float().mean() > 0.95


@pytest.mark.parametrize("temporal", ["lstm", "transformer"])
@pytest.mark.parametrize("motion", ["add", "only"])
def test_model_with_motion_features(temporal, motion):
    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=4, backbone="test_resnet", temporal=temporal, motion=motion,
                         motion_map=6, hidden_size=16).eval()
    clips = torch.randn(2, 5, 3, 48, 48)
    feats = model.clip_features(clips)
    # Pooled features, then the stride-8 map (test_resnet's layer2: 48 channels) pooled to 6 x 6.
    stride8 = [f for f in model.backbone.feature_info if f["reduction"] == 8][-1]
    assert feats.shape == (2, 5, model.feature_dim) and model.feature_dim == model.appearance_dim + stride8["num_chs"] * 36
    torch.testing.assert_close(model(clips), model(feats))
    head_in = model.head.proj[0].in_features if temporal == "transformer" else model.head.lstm.input_size
    assert head_in == 225 + (model.appearance_dim if motion == "add" else 0)
    # Every trainable parameter gets a gradient.
    model.train()
    model(clips).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # Frames stay independent: one frame's features do not depend on the others in the batch.
    model.eval()  # (the training pass above moved the batch-norm statistics)
    torch.testing.assert_close(model.frame_features(clips[0, :1]), model.clip_features(clips)[0, :1],
                               rtol=1e-4, atol=1e-5)


def test_motion_needs_a_stride8_stage():
    with pytest.raises(ValueError, match="stride-8"):
        create_model("cnn_lstm", num_classes=2, backbone="vit_tiny_patch16_224", motion="only", hidden_size=8)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_motion_transformer_model_exports_to_onnx(tmp_path):
    from actionrec.deploy.export import export_onnx, max_abs_diff_onnx

    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=4, backbone="test_resnet", temporal="transformer", motion="only",
                         motion_map=4, hidden_size=16).eval()
    paths = export_onnx(model, tmp_path, clip_len=6, crop_size=48)
    diff = max_abs_diff_onnx(model, paths, clip_len=6, crop_size=48)
    assert max(diff.values()) < 1e-3, diff


def test_lstm_head_unchanged_by_default():
    head = LSTMHead(8, 3, hidden_size=4)
    assert head.lstm.input_size == 8
