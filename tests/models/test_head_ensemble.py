"""``model.heads`` > 1: temporal heads trained one after the other on a frozen backbone's features,
their softmax averaged at test (CNNLSTM.members / train_head, the cosine schedule's cycles, the config
rules, int8 and explanations of such a model)."""

from __future__ import annotations

import pytest
import torch

from actionrec.config import ConfigError, load_config
from actionrec.deploy.explain import _Capture
from actionrec.deploy.export import quantize_head
from actionrec.engine.optim import create_optimizer, create_scheduler, warmup_cosine_factor
from actionrec.models.factory import create_model

KW = dict(num_classes=5, backbone="test_resnet", hidden_size=16, freeze_backbone=True, temporal="transformer",
          motion="only", motion_map=4, contrast=8, contrast_grid=2, pooling="mean")


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    yield


def _model(heads: int, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_model("cnn_lstm", **{**KW, **kw}, heads=heads).place("cpu", "cpu")


def _member_alone(model, i: int):
    """A one-head model holding member ``i`` of ``model`` as its head and contrast branch."""
    one = _model(1)
    head, contrast = model.members()[i]
    one.head.load_state_dict(head.state_dict())
    one.contrast.load_state_dict(contrast.state_dict())
    return one.eval()


def test_more_heads_draw_nothing_from_the_rng_and_start_different():
    one, three = _model(1), _model(3)
    after_one = torch.rand(4)
    torch.manual_seed(0)
    create_model("cnn_lstm", **KW, heads=3)
    assert torch.equal(torch.rand(4), after_one)  # the scouts and the loader draw what they draw with one head
    assert [k for k in three.state_dict() if k not in one.state_dict()][0] == "active_head"
    for k, v in one.state_dict().items():  # the first member is the one-head model's head
        assert torch.equal(three.state_dict()[k], v), k
    w = [h.fc.weight for h, _ in three.members()]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert len({id(c) for _, c in three.members()}) == 3  # each head has its own contrast branch


def test_placement_puts_the_active_head_with_the_heads():
    # DDP broadcasts buffers with the parameters; NCCL refuses a CPU tensor beside CUDA heads.
    model = _model(2).place("cpu", "meta")
    assert model.active_head.device.type == "meta" and model.head.fc.weight.device.type == "meta"
    assert model.more_heads[0]["head"].fc.weight.device.type == "meta"
    assert next(model.backbone.parameters()).device.type == "cpu"


def test_eval_averages_the_softmax_of_the_heads_trained_so_far():
    model = _model(3).eval()
    feats = torch.randn(3, 6, model.feature_dim)
    with torch.no_grad():
        alone = [_member_alone(model, i).forward_head(feats).softmax(-1) for i in range(3)]
        # Before any train_head call only the first head counts: its logits, unchanged.
        torch.testing.assert_close(model.forward_head(feats), _member_alone(model, 0).forward_head(feats))
        model.train_head(1)
        torch.testing.assert_close(model.forward_head(feats).exp(), (alone[0] + alone[1]) / 2)
        model.train_head(2)
        out = model.forward_head(feats)
    torch.testing.assert_close(out.exp(), sum(alone) / 3)
    torch.testing.assert_close(out.softmax(-1), sum(alone) / 3)  # its softmax is the average too
    # The active head is part of the checkpoint: a fresh model loading it averages the same three.
    fresh = _model(3, seed=5).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_head(feats), out)


def test_training_moves_only_the_head_in_training():
    model = _model(2)
    opt = create_optimizer(model, "adamw", lr=1e-2, weight_decay=0.5)
    x, y = torch.randn(8, 6, model.feature_dim), torch.randint(0, 5, (8,))

    def steps(n):
        model.train()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model.forward_head(x), y).backward()
            opt.step()

    def member(i):
        return {k: v.clone() for h, c in [model.members()[i]] for k, v in [*h.state_dict().items(),
                                                                            *c.state_dict().items()]}

    first0, second0 = member(0), member(1)
    steps(3)  # head 0 trains; head 1 (no gradient) is left alone, weight decay included
    assert all(torch.equal(v, second0[k]) for k, v in member(1).items())
    first1 = member(0)
    assert not all(torch.equal(v, first0[k]) for k, v in first1.items())
    model.train_head(1)
    steps(3)  # now the other way round, although head 0 has AdamW state from its turn
    assert all(torch.equal(v, first1[k]) for k, v in member(0).items())
    assert not all(torch.equal(v, second0[k]) for k, v in member(1).items())


def test_cosine_cycles_restart_warmup_and_cosine_per_head():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = create_scheduler(opt, warmup_steps=3, total_steps=10, min_ratio=0.1, cycles=2)
    lrs = []
    for _ in range(22):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ref = [warmup_cosine_factor(s, warmup_steps=3, total_steps=10, min_ratio=0.1) for s in range(10)]
    assert lrs[:10] == pytest.approx(ref) and lrs[10:20] == pytest.approx(ref)
    assert lrs[20:] == pytest.approx([0.1, 0.1])  # past the last cycle: its end, not a third warmup
    one = create_scheduler(torch.optim.SGD([p], lr=1.0), warmup_steps=3, total_steps=10, min_ratio=0.1)
    assert [one.lr_lambdas[0](s) for s in (0, 9, 15)] == pytest.approx([ref[0], ref[9], 0.1])


@pytest.mark.parametrize("overrides,key,why", [
    (["model.heads=2", "model.freeze_backbone=false"], "model.heads", "freeze_backbone"),
    (["model.heads=3"], "train.epochs", "multiple of model.heads=3"),
    (["model.heads=2", "optim.scheduler=plateau"], "model.heads", "optim.scheduler=cosine"),
    (["model.heads=9"], "model.heads", r"\[1, 8\]"),
])
def test_config_refuses_what_the_heads_cannot_do(overrides, key, why):
    base = ["model.freeze_backbone=true", "train.epochs=4"]
    with pytest.raises(ConfigError, match=rf"{key}.*{why}"):
        load_config(None, [*base, *overrides])


def test_int8_quantises_every_head_and_keeps_the_ensemble():
    model = _model(2, temporal="lstm", motion="none", contrast=0, contrast_grid=1).train_head(1).eval()
    q = quantize_head(model)
    kinds = {type(m).__module__ for h, _ in q.members() for m in h.modules() if type(m).__name__ == "Linear"}
    assert kinds and all("quantized" in k for k in kinds)
    feats = torch.randn(4, 6, model.feature_dim)
    with torch.no_grad():
        torch.testing.assert_close(q.forward_head(feats).exp(), model.forward_head(feats).exp(), atol=0.02, rtol=0)


def test_int8_copy_of_a_motion_and_contrast_model_runs_from_frames():
    """The recipe's kind of model (stage hooks for the motion map and the contrast) quantised as the
    int8 demo, server and export do: the copy's hooks fill the copy's stage outputs, so it runs from
    frames and gives the fp32 model's features and, up to int8, its probabilities."""
    import copy

    model = _model(2).train_head(1).eval()
    assert model.motion != "none" and model.contrast is not None
    clips = torch.randn(2, 6, 3, 48, 48)
    with torch.no_grad():
        feats = model.clip_features(clips)
        torch.testing.assert_close(copy.deepcopy(model).clip_features(clips), feats)
        q = quantize_head(model)
        torch.testing.assert_close(q.clip_features(clips), feats)
        torch.testing.assert_close(q(clips).exp(), model(clips).exp(), atol=0.02, rtol=0)
        assert model._stage_out == {} and q._stage_out == {}


def test_explained_attention_is_the_mean_over_the_heads():
    model = _model(2, temporal="lstm", pooling="attention", motion="none", contrast=0, contrast_grid=1)
    model.train_head(1).eval()
    feats = torch.randn(1, 6, model.feature_dim)
    weights = []
    for head, _ in model.members():
        head.attention.register_forward_hook(lambda _m, _i, out: weights.append(out[1]))
    capture = _Capture(model, model.backbone)
    with torch.no_grad():
        model.forward_head(feats)
    capture.remove()
    assert len(weights) == 2 and not torch.allclose(weights[0], weights[1])
    torch.testing.assert_close(capture.attention, (weights[0] + weights[1]) / 2)
    torch.testing.assert_close(capture.attention.sum(-1), torch.ones(1))


def test_onnx_export_of_the_ensemble_matches_torch(tmp_path):
    from actionrec.deploy.export import export_onnx, max_abs_diff_onnx

    model = _model(2).train_head(1).eval()
    paths = export_onnx(model, tmp_path, clip_len=4, crop_size=32)
    diffs = max_abs_diff_onnx(model, paths, clip_len=4, crop_size=32)
    assert diffs["head"] < 1e-4 and diffs["clip"] < 1e-4, diffs
    import onnxruntime as ort

    feats = torch.randn(2, 4, model.feature_dim)
    got = ort.InferenceSession(str(paths["head"]), providers=["CPUExecutionProvider"]).run(None, {"features": feats.numpy()})[0]
    with torch.no_grad():  # both heads are in the exported graph: its softmax is their average
        alone = [_member_alone(model, i).forward_head(feats).softmax(-1) for i in range(2)]
    torch.testing.assert_close(torch.from_numpy(got).softmax(-1), (alone[0] + alone[1]) / 2, atol=1e-5, rtol=0)
