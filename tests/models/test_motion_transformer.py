"""Motion correlation features, the transformer head, and the model built with them."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from actionrec.models.factory import create_model
from actionrec.models.heads import ALL_PAIRS_MAX_SIZE, LSTMHead, MotionCorrelation, TemporalContrast, TransformerHead


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


def _volume_by_definition(frames: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, T, C, S, S) maps -> (B * (T-1), D2, S, S): for each displacement, the channel dot product of
    frame t's unit-norm map with frame t+1's shifted by it, zero-padded at the borders."""
    s, k = frames.shape[-1], 2 * radius + 1
    m = torch.nn.functional.normalize(frames, dim=2)
    cur = m[:, :-1].flatten(0, 1)
    nxt = torch.nn.functional.pad(m[:, 1:].flatten(0, 1), (radius,) * 4)
    return torch.stack([(cur * nxt[:, :, dy : dy + s, dx : dx + s]).sum(1) for dy in range(k) for dx in range(k)], 1)


@pytest.mark.parametrize("all_pairs", [True, False])
@pytest.mark.parametrize("channels,size,radius,grid", [(32, 14, 2, 3), (8, 5, 3, 2), (4, 3, 1, 1)])
def test_correlation_equals_one_product_per_displacement(channels, size, radius, grid, all_pairs):
    """The batched all-pairs product gives what the definition says: for each displacement, the
    channel dot product of frame t with frame t+1 shifted by it, zero-padded at the borders."""
    torch.manual_seed(0)
    maps = torch.randn(3, 5, channels * size * size)
    vol = _volume_by_definition(maps.view(3, 5, channels, size, size), radius)
    expected = torch.nn.functional.adaptive_avg_pool2d(vol, grid).view(3, 4, -1)
    corr = MotionCorrelation(channels, size, radius=radius, grid=grid)
    assert corr.all_pairs  # the default up to ALL_PAIRS_MAX_SIZE
    corr.all_pairs = all_pairs
    out = corr(maps)
    torch.testing.assert_close(out[:, :-1], expected, rtol=1e-5, atol=1e-6)
    assert torch.all(out[:, -1] == 0)
    assert not corr.state_dict()  # derived indices stay out of checkpoints
    assert not MotionCorrelation(channels, ALL_PAIRS_MAX_SIZE + 1).all_pairs  # side^4 pairs: too many above it


@pytest.mark.parametrize("all_pairs", [True, False])
def test_correlation_softmax_is_each_cells_share_of_positions_per_displacement(all_pairs):
    """temperature > 0: per position a softmax over the displacements (of the definition's cosine
    volume), then the cell average: the share of the cell's positions that moved each way."""
    torch.manual_seed(0)
    c, s, r, tau = 16, 8, 1, 0.05
    base = torch.nn.functional.normalize(torch.randn(1, c, s, s + 2), dim=1)
    # Frame 1: the left half (columns 0-3) moved one cell right; the right half stayed.
    f0 = base[..., 1 : s + 1]
    f1 = torch.cat([base[..., 0:4], base[..., 5 : s + 1]], -1)
    maps = _maps(torch.stack([f0, f1], 1))
    expected = torch.softmax(_volume_by_definition(torch.stack([f0, f1], 1), r) / tau, 1).mean((2, 3))
    corr = MotionCorrelation(c, s, radius=r, grid=1, temperature=tau)
    corr.all_pairs = all_pairs
    out = corr(maps)[0, 0]
    torch.testing.assert_close(out, expected[0], rtol=1e-5, atol=1e-6)
    assert abs(float(out.sum()) - 1) < 1e-5
    # Index 4 is no motion, 5 one cell right. Columns 0-2 of frame 0 are found one cell right in
    # frame 1 (3/8 of the positions), columns 4-7 in place (1/2); column 3's content left the frame.
    share = out.tolist()
    assert abs(share[5] - 3 / 8) < 0.03 and abs(share[4] - 1 / 2) < 0.04, share
    # The raw cosine volume of the same maps stays as it was (raw=True, and temperature 0).
    torch.testing.assert_close(corr(maps, raw=True), MotionCorrelation(c, s, radius=r, grid=1)(maps))
    with pytest.raises(ValueError, match="temperature"):
        MotionCorrelation(c, s, temperature=-1.0)


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


def _motion_models(**variants) -> list:
    """Transformer models with motion features, the same seed, one per value of the one keyword given."""
    (key, values), = variants.items()
    models = []
    for value in values:
        torch.manual_seed(0)
        models.append(create_model("cnn_lstm", num_classes=4, backbone="test_resnet", temporal="transformer",
                                   motion="only", motion_map=6, hidden_size=16, **{key: value}).eval())
    return models


def test_motion_softmax_changes_what_the_head_sees_not_the_twin_summaries():
    clips = torch.randn(2, 5, 3, 48, 48)
    raw, soft = _motion_models(motion_softmax=(0.0, 0.1))
    assert soft.motion_corr.temperature == 0.1 and raw.motion_corr.temperature == 0.0
    feats = raw.clip_features(clips)
    torch.testing.assert_close(soft.clip_features(clips), feats)
    assert not torch.allclose(soft(feats), raw(feats))
    # data.reverse_pairs=auto's summaries read the raw similarities (its bars were measured on them).
    torch.testing.assert_close(soft.order_summary(feats), raw.order_summary(feats))
    from actionrec.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.motion_softmax"):
        load_config(None, ["model.motion_softmax=-0.1"])


@pytest.mark.parametrize("size", [8, 24])  # the all-pairs product and the per-displacement path
def test_motion_radius_reaches_a_shift_of_three_cells(size):
    torch.manual_seed(0)
    c = 5
    first = torch.randn(1, c, size, size)
    shifted = torch.roll(first, shifts=3, dims=3)  # everything moves 3 cells right
    maps = torch.stack([first, shifted], 1).reshape(1, 2, c * size * size)
    near, far = MotionCorrelation(c, size, radius=2, grid=1), MotionCorrelation(c, size, radius=4, grid=1)
    assert near.out_dim == 25 and far.out_dim == 81
    vol_near, vol_far = near(maps)[0, 0], far(maps)[0, 0]  # (D2,) cell means of step 0 -> 1
    # Radius 4 holds the match: the (dy, dx) = (0, +3) displacement, similarity 1 where it stays in the map.
    assert int(vol_far.argmax()) == 4 * 9 + (4 + 3)
    torch.testing.assert_close(vol_far[4 * 9 + 7], torch.tensor((size - 3) / size), atol=1e-5, rtol=0)
    assert float(vol_near.max()) < 0.5  # radius 2 sees only mismatches


def test_motion_radius_changes_what_the_head_sees_not_the_twin_summaries():
    clips = torch.randn(2, 5, 3, 48, 48)
    models = r2, r4 = _motion_models(motion_radius=(2, 4))
    assert r4.motion_corr.out_dim == 81 * 9 and r2.motion_corr.out_dim == 25 * 9
    feats = r2.clip_features(clips)
    torch.testing.assert_close(r4.clip_features(clips), feats)  # the cached features do not change
    assert r4(feats).shape == (2, 4)
    # data.reverse_pairs=auto's summaries read radius 2 either way (its bars were measured on them).
    torch.testing.assert_close(r4.order_summary(feats), r2.order_summary(feats))
    # Parameter-free: outside the head the keys are the same (a radius-2 checkpoint's backbone loads);
    # only the head's input layer widens.
    outside_head = [{k for k in m.state_dict() if not k.startswith("head.")} for m in models]
    assert outside_head[0] == outside_head[1] and not any("corr" in k for k in outside_head[0])
    from actionrec.config import ConfigError, load_config

    for bad in (0, 9):
        with pytest.raises(ConfigError, match="model.motion_radius"):
            load_config(None, [f"model.motion_radius={bad}"])


def test_motion_needs_a_stride8_stage():
    with pytest.raises(ValueError, match="stride-8"):
        create_model("cnn_lstm", num_classes=2, backbone="vit_tiny_patch16_224", motion="only", hidden_size=8)


def test_temporal_contrast_is_end_minus_start_over_valid_steps():
    torch.manual_seed(0)
    tc = TemporalContrast(6, 3)
    x = torch.randn(2, 9, 6)
    lengths = torch.tensor([9, 5])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    out = tc(x, mask)
    p = tc.proj(x)
    # Reference: the mean of the last floor(n/4) valid steps minus the first floor(n/4) (at least 1).
    for i, n in enumerate(lengths.tolist()):
        k = max(1, n // 4)
        torch.testing.assert_close(out[i], p[i, n - k : n].mean(0) - p[i, :k].mean(0))
    # Padded steps do not count, whatever they hold.
    x2 = x.clone()
    x2[1, 5:] = 1e3
    torch.testing.assert_close(tc(x2, mask), out)
    # Played backwards, the contrast changes sign.
    torch.testing.assert_close(tc(x[:1].flip(1), mask[:1]), -out[:1])
    with pytest.raises(ValueError, match="fraction"):
        TemporalContrast(6, 3, fraction=0.75)


@pytest.mark.parametrize("temporal", ["lstm", "transformer"])
def test_contrast_lets_a_motion_only_model_see_appearance_order(temporal):
    """With motion='only' the head never sees what is in the frames, only how they moved;
    model.contrast adds the end-minus-start change of the stride-16 stage's channel means (appended
    to each frame's features), so a clip and its time-reversed copy get different logits even
    where their motion features are the same."""
    torch.manual_seed(0)
    kw = dict(num_classes=3, backbone="test_resnet", temporal=temporal, motion="only", motion_map=4, hidden_size=16)
    plain, model = (create_model("cnn_lstm", **kw, contrast=c).eval() for c in (0, 8))
    plain.backbone.load_state_dict(model.backbone.state_dict())
    stride16 = [f for f in model.backbone.feature_info if f["reduction"] == 16][-1]
    assert model.contrast_channels == stride16["num_chs"]
    assert model.feature_dim == plain.feature_dim + stride16["num_chs"]
    assert model.head.fc.in_features == plain.head.fc.in_features + 8
    clips = torch.randn(2, 6, 3, 48, 48)
    feats = model.clip_features(clips)
    torch.testing.assert_close(feats[..., : plain.feature_dim], plain.clip_features(clips))
    torch.testing.assert_close(model(clips), model(feats))
    # The appended values are the stride-16 map's channel means.
    maps = []
    hook = model.backbone.get_submodule(stride16["module"]).register_forward_hook(lambda _m, _i, o: maps.append(o))
    model.backbone(clips.flatten(0, 1))
    hook.remove()
    torch.testing.assert_close(feats[..., plain.feature_dim :].flatten(0, 1), maps[0].mean((2, 3)), rtol=1e-4, atol=1e-5)
    # Every frame gets the same motion map: the correlation features are the same forwards and
    # backwards; only the stride-16 means change order.
    c = model.contrast_channels
    same_motion = feats.clone()
    same_motion[..., :-c] = feats[:, :1, :-c]
    reversed_ = torch.cat([same_motion[..., :-c], same_motion[..., -c:].flip(1)], -1)
    torch.testing.assert_close(plain(same_motion[..., :-c]), plain(reversed_[..., :-c]))
    assert (model(same_motion) - model(reversed_)).abs().max() > 1e-3
    # Gradients reach the contrast branch; padded clips run.
    model.train()
    model(same_motion, torch.tensor([6, 4])).sum().backward()
    assert all(p.grad is not None for p in model.contrast.parameters())


def test_contrast_grid_adds_the_stride16_cells():
    """model.contrast_grid=2: each frame carries the stride-16 map's channel means and then its 2 x 2
    cells (adaptive average pooling, channel-major); the contrast reads both, and the parameter-free
    order summary (data.reverse_pairs=auto) still reads the means only, as with grid 1."""
    torch.manual_seed(0)
    kw = dict(num_classes=3, backbone="test_resnet", temporal="transformer", motion="only", motion_map=4,
              hidden_size=16, contrast=8)
    one, two = (create_model("cnn_lstm", **kw, contrast_grid=g).eval() for g in (1, 2))
    two.backbone.load_state_dict(one.backbone.state_dict())
    c = one.contrast_channels
    assert two.contrast_dim == 5 * c and two.feature_dim == one.feature_dim + 4 * c
    assert two.contrast.proj[1].in_features == 5 * c
    clips = torch.randn(2, 6, 3, 48, 48)
    f1, f2 = one.clip_features(clips), two.clip_features(clips)
    torch.testing.assert_close(f2[..., : one.feature_dim], f1)
    stride16 = [f for f in two.backbone.feature_info if f["reduction"] == 16][-1]
    maps = []
    hook = two.backbone.get_submodule(stride16["module"]).register_forward_hook(lambda _m, _i, o: maps.append(o))
    two.backbone(clips.flatten(0, 1))
    hook.remove()
    cells = torch.nn.functional.adaptive_avg_pool2d(maps[0], 2).flatten(1)
    torch.testing.assert_close(f2[..., one.feature_dim :].flatten(0, 1), cells, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two(clips), two(f2))
    torch.testing.assert_close(two.order_summary(f2), one.order_summary(f1))
    # The cells matter: changing only them over time changes the logits.
    moved = f2.clone()
    moved[:, 3:, -4 * c :] += 1.0
    assert (two(moved) - two(f2)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="contrast_grid"):
        create_model("cnn_lstm", **kw, contrast_grid=0)
    from actionrec.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.contrast_grid"):
        load_config(None, ["model.contrast_grid=0"])


@pytest.mark.parametrize("motion_softmax", [0.0, 0.1])
def test_mirror_features_mirror_every_spatial_part(motion_softmax):
    """data.mirror_pairs on cached features: CNNLSTM.mirror_features flips the stride-8 map, the contrast's
    cells and the appearance grid left-right, so the motion correlation the head sees is exactly the
    original one mirrored (displacement dx -> -dx, the 3 x 3 grid's columns swapped); pooled vectors stay."""
    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=4, backbone="test_resnet", temporal="transformer", motion="only",
                         motion_map=6, motion_softmax=motion_softmax, hidden_size=16, contrast=8,
                         contrast_grid=2).eval()
    feats = model.clip_features(torch.randn(2, 5, 3, 48, 48))
    mirrored = model.mirror_features(feats)
    torch.testing.assert_close(model.mirror_features(mirrored), feats, rtol=0, atol=0)
    a, m, c = model.appearance_dim, model.motion_dim, model.contrast_channels
    torch.testing.assert_close(mirrored[..., :a], feats[..., :a], rtol=0, atol=0)
    vol = model.motion_corr(feats[..., a : a + m]).unflatten(-1, (5, 5, 3, 3))  # (B, T, dy, dx, grid y, grid x)
    vol_mirrored = model.motion_corr(mirrored[..., a : a + m]).unflatten(-1, (5, 5, 3, 3))
    torch.testing.assert_close(vol_mirrored, vol.flip(3).flip(5))
    assert not torch.allclose(vol_mirrored, vol)
    torch.testing.assert_close(mirrored[..., a + m : a + m + c], feats[..., a + m : a + m + c], rtol=0, atol=0)
    cells, cells_mirrored = (f[..., a + m + c :].unflatten(-1, (c, 2, 2)) for f in (feats, mirrored))
    torch.testing.assert_close(cells_mirrored, cells.flip(-1), rtol=0, atol=0)
    assert not torch.equal(cells_mirrored, cells)
    # Appearance grid cells (model.feature_grid=2) swap columns too.
    grid = create_model("cnn_lstm", num_classes=4, backbone="test_resnet", feature_grid=2, hidden_size=16).eval()
    g = grid.clip_features(torch.randn(1, 3, 3, 48, 48))
    torch.testing.assert_close(grid.mirror_features(g).unflatten(-1, (-1, 2, 2)), g.unflatten(-1, (-1, 2, 2)).flip(-1))


@pytest.mark.parametrize("motion, contrast, feature_grid", [("only", 8, 1), ("add", 0, 2), ("none", 8, 1)])
def test_head_inputs_give_the_logits_of_the_features_played_any_way(motion, contrast, feature_grid):
    """train.cache_features: the head's parameter-free part (the motion correlation) is computed once per
    cached clip (CNNLSTM.head_inputs). The head on those inputs gives forward_head's logits for the clip
    as it is, played backwards (reverse_inputs: time flipped, the correlations with the next and the
    previous frame swapped) and mirrored (mirror_inputs), and a model set to read_head_inputs takes them."""
    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=4, backbone="test_resnet", temporal="transformer", motion=motion,
                         motion_map=6, motion_softmax=0.1, hidden_size=16, contrast=contrast,
                         contrast_grid=2 if contrast else 1, feature_grid=feature_grid).eval()
    feats = model.clip_features(torch.randn(3, 6, 3, 48, 48))
    inputs = model.head_inputs(feats)
    if motion == "none":
        assert inputs is feats
    else:  # appearance | 2 correlations | contrast: smaller than the stride-8 map it replaces
        assert inputs.shape[-1] == feats.shape[-1] - model.motion_dim + 2 * model.motion_corr.out_dim
        torch.testing.assert_close(model.head_inputs(feats[1]), inputs[1])  # (T, D) as (B, T, D)
    with torch.no_grad():
        for played, played_inputs in [(feats, inputs), (feats.flip(1), model.reverse_inputs(inputs)),
                                      (model.mirror_features(feats), model.mirror_inputs(inputs)),
                                      (model.mirror_features(feats.flip(1)),
                                       model.mirror_inputs(model.reverse_inputs(inputs)))]:
            expected = model.forward_head(played)
            torch.testing.assert_close(model.forward_inputs(played_inputs), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(played_inputs, model.head_inputs(played), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.reverse_inputs(model.reverse_inputs(inputs)), inputs, rtol=0, atol=0)
        assert not model.reads_inputs
        assert model.read_head_inputs() is model and model.reads_inputs
        torch.testing.assert_close(model(inputs), model.forward_head(feats), rtol=1e-5, atol=1e-5)
        frames = torch.randn(2, 6, 3, 48, 48)  # clips of frames are unaffected
        torch.testing.assert_close(model(frames), model.forward_head(model.clip_features(frames)))


def test_a_model_reading_head_inputs_runs_no_correlation():
    """Why head_inputs exist: the correlation (2/3 of a head step on a CPU) runs once per cached clip,
    not in every training step: a model reading head inputs does not run it, forwards or backwards."""
    model = create_model("cnn_lstm", num_classes=4, backbone="test_resnet", temporal="transformer", motion="only",
                         motion_map=6, hidden_size=16).read_head_inputs()
    inputs = model.head_inputs(model.clip_features(torch.randn(2, 5, 3, 48, 48)))
    calls = []
    handle = model.motion_corr.register_forward_hook(lambda *args: calls.append(1))
    model(inputs).sum().backward()
    handle.remove()
    assert calls == []


def test_contrast_refuses_the_frame_averaging_baseline():
    with pytest.raises(ValueError, match="order-blind"):
        create_model("cnn_lstm", num_classes=2, backbone="test_resnet", temporal="none", contrast=4)
    from actionrec.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.contrast"):
        load_config(None, ["model.temporal=none", "model.contrast=8"])


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
@pytest.mark.parametrize("contrast,contrast_grid,motion_softmax,motion_map,motion_radius",
                         [(0, 1, 0.0, 4, 2), (8, 1, 0.0, 4, 2), (8, 2, 0.1, 4, 2), (8, 2, 0.1, 6, 4)])
def test_motion_transformer_model_exports_to_onnx(tmp_path, contrast, contrast_grid, motion_softmax, motion_map,
                                                  motion_radius):
    from actionrec.deploy.export import export_onnx, max_abs_diff_onnx

    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=4, backbone="test_resnet", temporal="transformer", motion="only",
                         motion_map=motion_map, motion_radius=motion_radius, hidden_size=16, contrast=contrast,
                         contrast_grid=contrast_grid, motion_softmax=motion_softmax).eval()
    paths = export_onnx(model, tmp_path, clip_len=6, crop_size=48)
    diff = max_abs_diff_onnx(model, paths, clip_len=6, crop_size=48)
    assert max(diff.values()) < 1e-3, diff


def test_lstm_head_unchanged_by_default():
    head = LSTMHead(8, 3, hidden_size=4)
    assert head.lstm.input_size == 8
