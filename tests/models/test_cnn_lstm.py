import pytest
import torch

from actionrec.models.cnn_lstm import CNNLSTM, create_backbone, grid_cells, grid_pool, map_torchvision_state_dict
from actionrec.models.factory import create_model
from actionrec.models.heads import LSTMHead, MeanHead

SMALL = dict(backbone="test_resnet", hidden_size=16, num_layers=2, dropout=0.0, lstm_dropout=0.0)


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
@pytest.mark.parametrize("temporal", ["lstm", "none"])
def test_output_shape_and_every_parameter_gets_gradient(pooling, temporal):
    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=5, temporal=temporal, pooling=pooling, **SMALL)
    # timm zero-initialises each residual block's last BN gamma, which makes the convs before it
    # receive exactly zero gradient at step 0; give them a non-zero gamma to see every path.
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(m.weight, 0.5)
    x = torch.randn(2, 4, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_time_distributed_equals_per_frame_backbone():
    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=3, **SMALL).eval()
    x = torch.randn(2, 5, 3, 32, 32)
    feats = model.clip_features(x)
    assert feats.shape == (2, 5, model.feature_dim)
    per_frame = torch.stack([torch.stack([model.backbone(x[b, t : t + 1])[0] for t in range(5)]) for b in range(2)])
    torch.testing.assert_close(feats, per_frame, rtol=1e-4, atol=1e-5)


def test_backbone_called_once_per_clip_batch():
    model = create_model("cnn_lstm", num_classes=3, **SMALL)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    model(torch.randn(3, 4, 3, 32, 32))
    assert calls == [torch.Size([12, 3, 32, 32])]


@pytest.mark.parametrize("frozen", [True, False])
def test_eval_mode_backbone_on_cpu_runs_in_pieces_with_the_same_features(frozen):
    # The recipe's backbone with its stage hooks (motion: stride 8, contrast: stride 16 and its cells).
    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=3, backbone="test_resnet", temporal="transformer", motion="only",
                         motion_map=4, contrast=8, contrast_grid=2, freeze_backbone=frozen, hidden_size=16)
    for m in model.backbone.modules():  # batch-norm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    clips = torch.randn(3, 7, 3, 32, 32)  # 21 frames; 8 per call at 32 x 32 below
    model.cpu_pixels_per_call = 8 * 32 * 32
    model.eval()
    with torch.no_grad():  # feature extraction and testing
        pieces = model.clip_features(clips)
        assert calls == [8, 8, 5]
        calls.clear()
        model.cpu_pixels_per_call = 0  # one call, as on a GPU
        whole = model.clip_features(clips)
        assert calls == [21]
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
    model.cpu_pixels_per_call = 8 * 32 * 32
    # With gradients (Grad-CAM's hooks, torch-pruning's graph, training): one call.
    calls.clear()
    model.clip_features(clips.requires_grad_(True))
    assert calls == [21]
    model.train()
    calls.clear()
    model(clips)
    assert calls == [21]


def test_lstm_is_order_sensitive_and_mean_head_is_not():
    torch.manual_seed(0)
    feats = torch.randn(2, 6, 8)
    rev = feats.flip(1)
    lstm = LSTMHead(8, 4, hidden_size=8, dropout=0.0, pooling="last").eval()
    mean = MeanHead(8, 4, dropout=0.0).eval()
    assert not torch.allclose(lstm(feats), lstm(rev))
    torch.testing.assert_close(mean(feats), mean(rev))


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_packed_lengths_ignore_padding(pooling):
    torch.manual_seed(0)
    head = LSTMHead(8, 4, hidden_size=8, dropout=0.0, pooling=pooling).eval()
    feats = torch.randn(2, 6, 8)
    lengths = torch.tensor([6, 3])
    out = head(feats, lengths)
    garbage = feats.clone()
    garbage[1, 3:] = 100.0  # padding must not matter
    torch.testing.assert_close(head(garbage, lengths), out)
    torch.testing.assert_close(out[1:], head(feats[1:, :3]))  # same as the unpadded sequence


def test_lstm_init_is_orthogonal_with_forget_bias():
    head = LSTMHead(8, 4, hidden_size=6)
    w = head.lstm.weight_hh_l0.detach()
    for chunk in w.chunk(4, 0):
        torch.testing.assert_close(chunk @ chunk.T, torch.eye(6), atol=1e-5, rtol=0)
    b = head.lstm.bias_ih_l0.detach()
    assert torch.all(b[6:12] == 1) and torch.all(b[:6] == 0)


def test_freeze_backbone_keeps_bn_stats_and_blocks_grads():
    model = create_model("cnn_lstm", num_classes=3, freeze_backbone=True, **SMALL).train()
    assert not model.backbone.training and model.head.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(torch.randn(2, 3, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_freeze_stages_freezes_stem_and_first_stage_only():
    model = create_model("cnn_lstm", num_classes=3, freeze_stages=1, backbone="resnet18", hidden_size=8)
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen and any(n.startswith("layer1.") for n in frozen)
    assert not any(n.startswith(("layer2.", "layer3.", "layer4.")) for n in frozen)


def test_channels_last_and_grad_checkpointing_match_default():
    torch.manual_seed(0)
    ref = create_model("cnn_lstm", num_classes=3, backbone="resnet18", hidden_size=8, dropout=0.0).eval()
    other = create_model(
        "cnn_lstm", num_classes=3, backbone="resnet18", hidden_size=8, dropout=0.0, channels_last=True, grad_checkpointing=True
    ).eval()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 3, 64, 64)
    torch.testing.assert_close(other(x), ref(x), rtol=1e-4, atol=1e-4)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="model.backbone='nonexistent_net'"):
        create_backbone("nonexistent_net")


def test_local_pretrained_file_timm_and_torchvision_format(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    m = create_backbone("resnet18", pretrained=str(tmp_path / "tv.pth"))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(m.eval()(x), tv.eval()(x), rtol=1e-4, atol=1e-4)
    torch.save({"state_dict": m.state_dict()}, tmp_path / "timm.pth")
    m2 = create_backbone("resnet18", pretrained=str(tmp_path / "timm.pth"), pretrained_format="timm")
    torch.testing.assert_close(m2.eval()(x), m(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="tensors but the timm model has"):
        map_torchvision_state_dict({"a": torch.zeros(1)}, m, "x.pth")


def test_model_parallel_placement_same_outputs_and_grads():
    torch.manual_seed(0)
    a = create_model("cnn_lstm", num_classes=3, **SMALL)
    b = create_model("cnn_lstm", num_classes=3, **SMALL)
    b.load_state_dict(a.state_dict())
    b.place("cpu", "cpu")
    x = torch.randn(2, 3, 3, 32, 32)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)
    assert isinstance(b, CNNLSTM) and b.output_device == torch.device("cpu")


def test_placement_puts_everything_the_head_runs_on_the_head_device():
    """The contrast branch and the motion correlation's buffers run in forward_head, on the head's
    device: left behind on the default device they failed on a GPU (tensors on two devices)."""
    model = create_model("cnn_lstm", num_classes=3, backbone="test_resnet", temporal="transformer", motion="only",
                         motion_map=6, contrast=8, contrast_grid=2, hidden_size=16)
    model.place("cpu", "meta")  # a second device on any machine
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    assert {n.split(".")[0] for n, _ in tensors} >= {"backbone", "head", "contrast", "motion_corr"}
    for name, t in tensors:
        assert t.device.type == ("cpu" if name.startswith("backbone.") else "meta"), name
    assert model.output_device == torch.device("meta") and model.input_device == torch.device("cpu")
    # data.reverse_pairs=auto summarises cached features, which come from the CPU (forward_head:
    # the GPU test below; autocast has no meta device).
    assert model.order_summary(torch.randn(2, 5, model.feature_dim)).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_motion_contrast_model_on_gpu_matches_cpu():
    torch.manual_seed(0)
    kw = dict(num_classes=3, backbone="test_resnet", temporal="transformer", motion="only", motion_map=6, contrast=8,
              contrast_grid=2, hidden_size=16)
    cpu = create_model("cnn_lstm", **kw).eval()
    gpu = create_model("cnn_lstm", **kw).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.place("cuda", "cuda")
    clips = torch.randn(2, 5, 3, 48, 48)
    with torch.no_grad():
        expected = cpu(clips)
        torch.testing.assert_close(gpu(clips).cpu(), expected, rtol=1e-3, atol=1e-3)
        feats = cpu.clip_features(clips)
        torch.testing.assert_close(gpu(feats).cpu(), expected, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(gpu.order_summary(feats).cpu(), cpu.order_summary(feats), rtol=1e-3, atol=1e-3)


def test_feature_dim_follows_pre_logits_width_and_forward_takes_features():
    # MobileNetV3 adds a 576 -> 1024 pre-logits layer after pooling; num_features alone is 576.
    torch.manual_seed(0)
    m = create_model("cnn_lstm", num_classes=3, backbone="mobilenetv3_small_100", hidden_size=8).eval()
    x = torch.randn(1, 2, 3, 32, 32)
    feats = m.clip_features(x)
    assert m.feature_dim == feats.shape[-1] == 1024
    # (B, T, D) features (the frozen-backbone feature cache) run the head only, with the same result.
    torch.testing.assert_close(m(feats), m(x))


def test_feature_grid_pools_the_feature_map_to_a_grid():
    torch.manual_seed(0)
    m = create_model("cnn_lstm", num_classes=3, feature_grid=2, **SMALL).eval()
    x = torch.randn(2, 3, 3, 128, 128)
    feats = m.clip_features(x)
    c = m.backbone.num_features
    assert m.feature_dim == feats.shape[-1] == 4 * c
    # Reference: average each quadrant of the last feature map (4x4 at 128 px, stride 32) by hand.
    fmap = m.backbone.forward_features(x.flatten(0, 1))
    assert fmap.shape[-2:] == (4, 4)
    quads = [fmap[..., i : i + 2, j : j + 2].mean((-2, -1)) for i in (0, 2) for j in (0, 2)]
    ref = torch.stack(quads, -1).flatten(1).view(2, 3, -1)  # (N, C, 4) flattened channel-major
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-6)
    # With grid 1 the same backbone gives its global average, which is the mean of the quadrants.
    g1 = create_model("cnn_lstm", num_classes=3, **SMALL).eval()
    g1.backbone.load_state_dict(m.backbone.state_dict())
    torch.testing.assert_close(g1.clip_features(x), ref.view(2, 3, c, 4).mean(-1), rtol=1e-5, atol=1e-6)


def test_feature_grid_needs_a_cnn_feature_map():
    m = create_model("cnn_lstm", num_classes=3, backbone="test_vit", hidden_size=8, feature_grid=2)
    with pytest.raises(ValueError, match="feature_grid=2 needs a CNN feature map"):
        m(torch.randn(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="feature_grid must be >= 1"):
        create_model("cnn_lstm", num_classes=3, feature_grid=0, **SMALL)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (4, 4), (5, 7)])
@pytest.mark.parametrize("grid", [2, 3])
def test_grid_pool_equals_adaptive_avg_pool(size, grid):
    fmap = torch.randn(3, 5, *size)
    ref = torch.nn.functional.adaptive_avg_pool2d(fmap, grid).flatten(1)
    torch.testing.assert_close(grid_pool(fmap, grid), ref)


# Backbones whose head holds parameters after pooling (MobileNetV3 conv_head, ConvNeXt head.norm,
# MambaOut's MLP) and one with a channels-last feature map (MambaOut, like Swin): all cheap at 32 px.
HEAD_BACKBONES = ["mobilenetv3_small_100", "test_convnext", "test_mambaout", "test_resnet"]


@pytest.mark.parametrize("grid", [1, 2])
@pytest.mark.parametrize("backbone", HEAD_BACKBONES)
def test_every_backbone_parameter_gets_a_gradient_with_and_without_grid(backbone, grid):
    """An unused trainable parameter is what DDP refuses ("Expected to have finished reduction")."""
    torch.manual_seed(0)
    m = create_model("cnn_lstm", num_classes=3, backbone=backbone, hidden_size=8, feature_grid=grid, dropout=0.0)
    x = torch.randn(2, 2, 3, 64, 64)
    feats = m.clip_features(x)
    assert feats.shape == (2, 2, m.feature_dim)
    m(x).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_channels_last_feature_maps_are_pooled_over_height_and_width():
    torch.manual_seed(0)
    m = create_model("cnn_lstm", num_classes=3, backbone="test_mambaout", hidden_size=8, feature_grid=2).eval()
    assert m.feature_layout == "NHWC"
    x = torch.randn(3, 3, 128, 128)
    fmap = m.backbone.forward_features(x)  # (N, h, w, C)
    assert fmap.shape[-1] == m.backbone.num_features and fmap.shape[1:3] == (4, 4)
    # Reference: the quadrants of the map, averaged over height and width, through the head's layers.
    quads = torch.stack([torch.stack([fmap[:, i:i + 2, j:j + 2].mean((1, 2)) for j in (0, 2)], 1) for i in (0, 2)], 1)
    ref = m.backbone.forward_head(quads, pre_logits=True).permute(0, 3, 1, 2).flatten(1)
    torch.testing.assert_close(m.frame_features(x), ref, rtol=1e-5, atol=1e-6)
    nchw = torch.randn(2, 5, 7, 6)
    torch.testing.assert_close(grid_cells(nchw.permute(0, 2, 3, 1), 3, channels_last=True),
                               torch.nn.functional.adaptive_avg_pool2d(nchw, 3).permute(0, 2, 3, 1))


def test_grid_features_of_a_conv_head_backbone_run_its_head_per_cell():
    # MobileNetV3's conv_head (576 -> 1024) follows pooling: with a grid it runs on every cell.
    torch.manual_seed(0)
    m = create_model("cnn_lstm", num_classes=3, backbone="mobilenetv3_small_100", hidden_size=8, feature_grid=2).eval()
    x = torch.randn(1, 2, 3, 64, 64)
    assert m.feature_dim == m.clip_features(x).shape[-1] == 1024 * 4
    fmap = m.backbone.forward_features(x.flatten(0, 1))
    ref = m.backbone.forward_head(torch.nn.functional.adaptive_avg_pool2d(fmap, 2), pre_logits=True).flatten(1)
    torch.testing.assert_close(m.clip_features(x).flatten(0, 1), ref, rtol=1e-5, atol=1e-6)


def test_dropout_default_is_written_once_for_the_models_and_pinned_in_the_config():
    from actionrec.config import ModelConfig
    from actionrec.models import factory, heads

    assert ModelConfig().dropout == heads.DROPOUT  # config.py stays torch-free, so it cannot import it
    assert factory.HEAD_DEFAULTS["dropout"] is heads.DROPOUT
