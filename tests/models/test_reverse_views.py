"""``eval.reverse_views``: at test, each clip is also played backwards and read at its time-reversed
twins' labels (CNNLSTM.set_test_twins, build.test_twins_from): the combined softmax against the
formula, the cached-input path against the features path, training untouched, ONNX and int8 copies,
and the checkpoint loader turning it on from the config."""

from __future__ import annotations

import pytest
import torch

from actionrec import build
from actionrec.config import ConfigError, load_config
from actionrec.deploy.export import quantize_head
from actionrec.models.factory import create_model

KW = dict(num_classes=5, backbone="test_resnet", hidden_size=16, freeze_backbone=True, temporal="transformer",
          motion="only", motion_map=4, contrast=8, contrast_grid=2, pooling="mean")
# Classes 0/1 and 3/4 are twins; class 2 has none.
TWINS = [1, 0, -1, 4, 3]


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    yield


def _model(heads: int = 2, **kw):
    torch.manual_seed(0)
    return create_model("cnn_lstm", **{**KW, **kw}, heads=heads).place("cpu", "cpu").train_head(heads - 1).eval()


def _expected(model, feats: torch.Tensor, twins: list[int]) -> torch.Tensor:
    """The formula: a class with a twin t scores (p[c] + r[t]) / 2, p the clip's softmax and r the
    backwards clip's; a class without keeps p[c]; renormalised."""
    model.set_test_twins(None)
    with torch.no_grad():
        p, r = model.forward_head(feats).softmax(-1), model.forward_head(feats.flip(1)).softmax(-1)
    q = torch.stack([(p[:, c] + r[:, t]) / 2 if t >= 0 else p[:, c] for c, t in enumerate(twins)], 1)
    return q / q.sum(1, keepdim=True)


@pytest.mark.parametrize("twins", [TWINS, [1, 0, 2, 4, 3]], ids=["one-without-twin", "one-its-own-twin"])
def test_eval_adds_the_clip_played_backwards_at_the_twins_labels(twins):
    model = _model()
    feats = torch.randn(3, 6, model.feature_dim)
    expected = _expected(model, feats, twins)
    with torch.no_grad():
        plain = model.forward_head(feats).softmax(-1)
        out = model.set_test_twins(twins).forward_head(feats)
    torch.testing.assert_close(out.softmax(-1), expected)
    torch.testing.assert_close(out.exp(), expected)  # a log-probability vector, as the heads' ensemble gives
    assert not torch.allclose(out.softmax(-1), plain, atol=1e-3)
    # From frames: the same as from their features.
    clips = torch.randn(2, 6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), model.forward_head(model.clip_features(clips)))


def test_cached_head_inputs_give_what_the_features_give():
    # The feature cache's validation reads head inputs (reverse_inputs plays them backwards).
    model = _model().set_test_twins(TWINS)
    feats = torch.randn(3, 6, model.feature_dim)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_inputs(model.head_inputs(feats)), model.forward_head(feats))
        model.read_head_inputs()
        torch.testing.assert_close(model(model.head_inputs(feats)), model.forward_head(feats))


def test_training_and_partial_clips_are_unchanged():
    model = _model(heads=1)
    feats = torch.randn(3, 6, model.feature_dim)
    lengths = torch.tensor([6, 4, 5])
    with torch.no_grad():
        plain = model.forward_head(feats, lengths)
        torch.testing.assert_close(model.set_test_twins(TWINS).forward_head(feats, lengths), plain)
    model.train()
    torch.manual_seed(1)
    with_twins = model.forward_head(feats)
    torch.manual_seed(1)
    model.set_test_twins(None)
    torch.testing.assert_close(model.forward_head(feats), with_twins)


def test_twins_are_checked():
    model = _model()
    with pytest.raises(ValueError, match="test twins must be 5 class indices"):
        model.set_test_twins([1, 0, 2])
    with pytest.raises(ValueError, match="test twins must be 5 class indices"):
        model.set_test_twins([1, 0, 5, 4, 3])
    assert model.set_test_twins([-1] * 5).test_twins is None  # no twin anywhere: off


def test_confident_heads_give_finite_log_probabilities():
    # A softmax of fp32 logits 200 apart is exactly 0; the combination stays finite (the eval loss reads it).
    model = _model().set_test_twins(TWINS)
    logits = torch.tensor([[200.0, 0.0, 0.0, 0.0, 0.0]])
    out = model._with_backwards(logits, torch.tensor([[0.0, 0.0, 0.0, 0.0, 200.0]]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(1))
    # Class 0 has it from the clip, class 3 from the clip backwards (read at its twin, 4): half each.
    torch.testing.assert_close(out[0, [0, 3]].exp(), torch.tensor([0.5, 0.5]))


def test_int8_and_onnx_copies_keep_it(tmp_path):
    from actionrec.deploy.export import export_onnx, max_abs_diff_onnx

    model = _model().set_test_twins(TWINS)
    feats = torch.randn(4, 6, model.feature_dim)
    expected = _expected(model, feats, TWINS)
    model.set_test_twins(TWINS)
    with torch.no_grad():
        torch.testing.assert_close(quantize_head(model).forward_head(feats).exp(), expected, atol=0.02, rtol=0)
    paths = export_onnx(model, tmp_path, clip_len=6, crop_size=32)
    diffs = max_abs_diff_onnx(model, paths, clip_len=6, crop_size=32)
    assert diffs["head"] < 1e-4 and diffs["clip"] < 1e-4, diffs
    import onnxruntime as ort

    got = ort.InferenceSession(str(paths["head"]), providers=["CPUExecutionProvider"]).run(None, {"features": feats.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got).softmax(-1), expected, atol=1e-5, rtol=0)


def test_explained_attention_lines_up_the_backwards_runs_with_the_frames():
    from actionrec.deploy.explain import _Capture

    model = _model(temporal="lstm", pooling="attention", motion="none", contrast=0, contrast_grid=1)
    feats = torch.randn(1, 6, model.feature_dim)
    weights = []
    for head, _ in model.members():
        head.attention.register_forward_hook(lambda _m, _i, out: weights.append(out[1]))
    capture = _Capture(model.set_test_twins(TWINS), model.backbone)
    with torch.no_grad():
        model.forward_head(feats)
    capture.remove()
    assert len(weights) == 4  # two heads on the clip, then on the clip played backwards
    torch.testing.assert_close(capture.attention, (weights[0] + weights[1] + weights[2].flip(-1) + weights[3].flip(-1)) / 4)
    assert not torch.allclose(weights[2].flip(-1), weights[2])


def _cfg(*overrides: str):
    return load_config(None, ["logging.wandb.mode=disabled", *overrides])


def test_twins_come_from_the_pairs_when_on():
    classes = ["Appear", "Vanish", "Wave", "ZoomIn", "ZoomOut"]
    pairs = "data.reverse_pairs=[[Appear, Vanish], [ZoomOut, ZoomIn]]"
    assert build.test_twins_from(_cfg(pairs, "eval.reverse_views=true"), classes) == TWINS
    assert build.test_twins_from(_cfg(pairs), classes) is None  # off by default
    assert build.test_twins_from(_cfg("data.reverse_pairs=[]", "eval.reverse_views=true"), classes) is None
    own = build.test_twins_from(_cfg("data.reverse_pairs=[[Wave, Wave]]", "eval.reverse_views=true"), classes)
    assert own == [-1, -1, 2, -1, -1]
    with pytest.raises(ConfigError, match="class 'Open' is not in the dataset"):
        build.test_twins_from(_cfg("data.reverse_pairs=[[Open, Close]]", "eval.reverse_views=true"), classes)


def test_checkpoint_loader_turns_it_on_from_the_config(tmp_path):
    from tests.deploy.explain_helpers import save_checkpoint

    classes = ["Appear", "Vanish", "Wave", "ZoomIn", "ZoomOut"]
    cfg = _cfg("model.backbone=test_resnet", "model.hidden_size=16", "model.temporal=transformer", "model.motion=only",
               "model.motion_map=4", "model.freeze_backbone=true", "train.cache_features=true",
               "data.reverse_pairs=[[Appear, Vanish], [ZoomIn, ZoomOut]]", "eval.reverse_views=true")
    ckpt = save_checkpoint(build.model_from(cfg, len(classes)), cfg, classes, tmp_path / "last.pt")
    _, model, _ = build.model_from_checkpoint(ckpt)
    assert model.test_twins == TWINS
    _, model, _ = build.model_from_checkpoint(ckpt, ["eval.reverse_views=false"])
    assert model.test_twins is None
