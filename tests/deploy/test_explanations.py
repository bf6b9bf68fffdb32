"""Grad-CAM finds the object that carries the class, for two backbone families; the target layer is
found from the model; the streaming explainer equals the clip explainer; timelines from a stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actionrec import build
from actionrec.data.video_io import read_frames
from actionrec.deploy.explain import GradCamBackend, explain_clip, feature_map_module, stream_timeline
from actionrec.deploy.overlay import crop_box
from actionrec.deploy.streaming import StreamingClassifier
from actionrec.models.factory import create_model
from tests.deploy.explain_helpers import BLUE, RED, model_config, normalise, square_clip, train_briefly, write_video


pytestmark = pytest.mark.usefixtures("two_torch_threads")  # tests/conftest.py


def tiny(backbone: str, num_classes: int = 2, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cnn_lstm", num_classes=num_classes, backbone=backbone, hidden_size=16, dropout=0.0,
                        lstm_dropout=0.0, **kw).eval()


# 128 px frames: stride-32 backbones give a 4x4 map, fine enough to localise a 32 px square (1/16 of the frame).
# About 5 s each on an idle 2-core CPU.
@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])
def test_gradcam_mass_is_on_the_moving_square_that_carries_the_class(backbone, tmp_path):
    # Classes: no square, a red one, a blue one, moving over the same kind of grey blobs. Two colours
    # and an empty class make the colour itself the evidence: with "square or not" alone, a briefly
    # trained ResNet learnt to see the square by the background it hides, which Grad-CAM (positive
    # evidence) cannot show; with colours alone, EfficientNet told some colours apart by the others.
    colours, n = [None, RED, BLUE], 36
    rng = np.random.default_rng(0)
    train = np.concatenate([square_clip(rng, colours[i % 3])[0] for i in range(n)])
    # Trained on what the reader returns (mpeg4 smooths the noise and the square's edges).
    train = read_frames(write_video(tmp_path / "train.mp4", train), range(len(train))).reshape(n, 2, 128, 128, 3)
    model = tiny(backbone, num_classes=3)
    train_briefly(model, torch.stack([normalise(c) for c in train]), torch.tensor([i % 3 for i in range(n)]), steps=40)
    transform = build.eval_transforms_from(model_config(["data.resize_short=128", "data.crop_size=128"]).data)[0]
    ratios = []
    for seed in range(6):  # unseen videos, through the file reader and the eval transform
        label = 1 + seed % 2
        frames, boxes = square_clip(np.random.default_rng(100 + seed), colours[label])
        exp = explain_clip(model, transform(read_frames(write_video(tmp_path / f"square{seed}.mp4", frames), [0, 1])))
        assert exp.class_index == label and exp.probs[label] > 0.8  # it sees the square...
        assert exp.cams.shape == (2, 128, 128) and exp.cams.max() == pytest.approx(1.0) and exp.cams.min() >= 0
        inside = sum(cam[y0:y1, x0:x1].sum() for cam, (x0, y0, x1, y1) in zip(exp.cams, boxes))
        ratios.append(inside / exp.cams.sum() / (32 * 32 / 128**2))  # mass share / area share
    # ...and Grad-CAM says so: the square (1/16 of each frame) holds well over its share of the heat
    # (3-3.5x on average with 1 or 2 threads, 1.65x the least; bilinear upsampling of a 4x4 map spreads it).
    assert np.mean(ratios) >= 2.0 and min(ratios) > 1.0, ratios


@pytest.mark.parametrize("backbone, layer", [("test_resnet", "layer4"), ("test_convnext", "norm_pre"),
                                             ("mobilenetv3_small_050", "blocks"), ("test_efficientnet", "bn2"),
                                             ("test_mambaout", "stages")])
def test_target_layer_is_the_module_that_returns_the_feature_map(backbone, layer):
    model = tiny(backbone)
    x = torch.randn(1, 3, 64, 64)
    name, module = feature_map_module(model.backbone, x)
    assert name == layer and module is dict(model.backbone.named_modules())[layer]
    seen = []
    hook = module.register_forward_hook(lambda _m, _inp, out: seen.append(out))
    with torch.no_grad():
        fmap = model.backbone.forward_features(x)
    hook.remove()
    assert fmap.dim() == 4 and torch.equal(seen[-1], fmap)


def test_vit_token_sequences_are_refused_with_a_clear_error():
    model = tiny("test_vit")
    with pytest.raises(ValueError, match="Grad-CAM needs a 2-D feature map"):
        explain_clip(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("kw", [dict(backbone="test_resnet", feature_grid=2, freeze_backbone=True),
                                dict(backbone="test_mambaout"),  # channels-last (NHWC) feature map
                                dict(backbone="test_convnext", temporal="none", grad_checkpointing=True),
                                dict(backbone="test_resnet", grad_checkpointing=True)])
def test_heatmaps_for_frozen_channels_last_checkpointed_and_mean_head_models(kw):
    model = tiny(num_classes=3, **kw)
    exp = explain_clip(model, torch.randn(3, 3, 64, 64), class_index=2)
    assert exp.class_index == 2 and exp.cams.shape == (3, 64, 64) and exp.cams_lowres.shape == (3, 2, 2)
    # In [0, 1], peak 1 (or all 0: a random model may have no positive evidence for class 2).
    assert np.isfinite(exp.cams).all() and exp.cams.min() >= 0 and exp.cams.max() in (0.0, pytest.approx(1.0))
    assert exp.probs.sum() == pytest.approx(1)
    assert exp.attention is None if kw.get("temporal") == "none" else exp.attention.sum() == pytest.approx(1, abs=1e-5)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: nothing accumulated in the model
    flags = [m for m in model.backbone.modules() if getattr(m, "grad_checkpointing", False) is True]
    assert bool(flags) == kw.get("grad_checkpointing", False)  # switched off for the explanation only


def test_clip_explanation_covers_every_frame_where_testing_runs_the_backbone_in_pieces():
    # Testing runs a frozen backbone on a CPU a few frames per call (CNNLSTM.frames_per_call); Grad-CAM
    # needs the whole clip's activations from one call, and gets them: it runs with gradients.
    model = tiny(backbone="test_resnet", num_classes=3, freeze_backbone=True)
    model.cpu_pixels_per_call = 2 * 64 * 64  # 2 frames per call without gradients
    clip = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        assert model.frames_per_call(clip) == 2
    exp = explain_clip(model, clip, class_index=1)
    assert exp.cams.shape == (5, 64, 64) and exp.cams_lowres.shape == (5, 2, 2)
    model.cpu_pixels_per_call = 0
    whole = explain_clip(model, clip, class_index=1)
    np.testing.assert_allclose(exp.cams, whole.cams, atol=1e-5)
    np.testing.assert_allclose(exp.probs, whole.probs, atol=1e-6)


def test_streaming_explainer_equals_the_clip_explainer_for_the_newest_frame():
    # The demo explains each new frame in its window, older frames as constants: the same gradient
    # as Grad-CAM over the whole clip, for the last frame.
    model = tiny("test_resnet", num_classes=4)
    preprocess = build.eval_transforms_from(model_config(["data.resize_short=64", "data.crop_size=64"]).data)[0].frame
    rgb = np.random.default_rng(0).integers(0, 255, (5, 80, 64, 3), dtype=np.uint8)
    # A class with positive evidence in the last frame (a random model has none for some).
    clip = torch.stack([preprocess(f) for f in rgb])
    exp = next(e for c in range(4) if (e := explain_clip(model, clip, c)).cams[-1].max() > 0)
    backend = GradCamBackend(model, preprocess)
    feats = np.stack([backend.features(f) for f in rgb])
    live = backend.newest_cam(feats, class_index=exp.class_index)
    assert live.shape == (64, 64)
    np.testing.assert_allclose(live, exp.cams[-1] / exp.cams[-1].max(), atol=1e-4)
    with torch.inference_mode():
        np.testing.assert_allclose(feats[-1], model.frame_features(preprocess(rgb[-1])[None])[0].numpy(), atol=1e-5)


def test_crop_box_is_the_eval_centre_crop_in_source_pixels():
    # 320x240 frame, short side to 40 (x 1/6), centre crop 32: the crop is the centre 192x192 square.
    assert crop_box(240, 320, resize_short=40, crop_size=32) == (60, 24, 252, 216)
    assert crop_box(64, 64, resize_short=64, crop_size=64) == (0, 0, 64, 64)


class _LevelBackend:
    """Feature = mean brightness; logits say 'dark' (class 0) or 'bright' (class 1)."""

    frames_encoded = 0

    def features(self, rgb):
        return np.array([rgb.mean() / 255.0], np.float32)

    def head(self, feats):
        b = float(feats[-1, 0])
        return np.array([10 * (0.5 - b), 10 * (b - 0.5)], np.float32)


class _Frames:
    def __init__(self, frames):
        self.frames, self.i = frames, 0

    def read(self):
        if self.i >= len(self.frames):
            return False, None
        self.i += 1
        return True, self.frames[self.i - 1]


@pytest.mark.parametrize("stride, warmup", [(1, 0), (3, 2)])
def test_timeline_covers_every_frame_and_bands_follow_the_top_class(stride, warmup):
    frames = [np.full((8, 8, 3), 0 if i < 12 else 255, np.uint8) for i in range(30)]
    clf = StreamingClassifier(_LevelBackend(), ["dark", "bright"], clip_len=4, stride=stride, smooth=1)
    tl = stream_timeline(clf, _Frames(frames))
    assert tl.num_frames == 30 and len(tl.top) == 30
    assert tl.frames.tolist() == list(range(stride - 1, 30, stride)) and tl.probs.shape == (len(tl.frames), 2)
    switch = next(f for f in tl.frames.tolist() if f >= 12)  # the first head run that sees a bright frame
    assert tl.bands() == [(warmup, switch, 0), (switch, 30, 1)]
    assert (tl.top[:warmup] == -1).all()
    j = tl.to_json(["dark", "bright"])
    assert len(j["top_per_frame"]) == 30 and j["bands"][-1] == {"label": "bright", "start": switch, "end": 30}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_explanations_match_the_cpu_ones():
    # cuDNN's LSTM refuses backward in eval mode: the head runs with cuDNN off, the backbone with it.
    model = tiny("test_resnet", num_classes=3)
    clip = torch.randn(4, 3, 64, 64)
    cpu = explain_clip(model, clip, 1)
    model.place("cuda", "cuda")
    gpu = explain_clip(model, clip, 1)
    np.testing.assert_allclose(gpu.probs, cpu.probs, atol=1e-4)
    np.testing.assert_allclose(gpu.attention, cpu.attention, atol=1e-4)
    np.testing.assert_allclose(gpu.cams, cpu.cams, atol=1e-2)
    preprocess = build.eval_transforms_from(model_config(["data.resize_short=64", "data.crop_size=64"]).data)[0].frame
    backend = GradCamBackend(model, preprocess)
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    feats = np.stack([backend.features(f) for f in frames])
    assert backend.newest_cam(feats).shape == (64, 64)
