import math

import pytest
import torch
import torch.nn.functional as F

from actionrec import build
from actionrec.config import ConfigError, load_config
from actionrec.models.losses import FocalLoss, create_loss, inverse_frequency_alpha


def reference_focal(logits, target, gamma, alpha=None):
    """Independent scalar implementation: mean_i alpha_y * -(1 - p_y)^gamma * log p_y."""
    total, wsum = 0.0, 0.0
    for row, y in zip(logits.tolist(), target.tolist()):
        m = max(row)
        z = sum(math.exp(v - m) for v in row)
        p = math.exp(row[y] - m) / z
        a = 1.0 if alpha is None else alpha[y]
        total += a * -((1 - p) ** gamma) * math.log(p)
        wsum += a
    return total / wsum


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 7, generator=g) * 3, torch.randint(0, 7, (32,), generator=g)


def test_gamma_zero_equals_cross_entropy(batch):
    logits, y = batch
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, y), F.cross_entropy(logits, y), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        FocalLoss(gamma=0.0, label_smoothing=0.1)(logits, y),
        F.cross_entropy(logits, y, label_smoothing=0.1),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
def test_matches_reference_formula(batch, gamma):
    logits, y = batch
    assert FocalLoss(gamma=gamma)(logits, y).item() == pytest.approx(reference_focal(logits, y, gamma), rel=1e-5)


def test_alpha_weights_match_reference_and_weighted_ce(batch):
    logits, y = batch
    alpha = [0.5, 1.0, 2.0, 1.5, 0.1, 3.0, 1.0]
    got = FocalLoss(gamma=2.0, alpha=alpha)(logits, y).item()
    assert got == pytest.approx(reference_focal(logits, y, 2.0, alpha), rel=1e-5)
    torch.testing.assert_close(
        FocalLoss(gamma=0.0, alpha=alpha)(logits, y), F.cross_entropy(logits, y, weight=torch.tensor(alpha)), rtol=1e-6, atol=1e-6
    )


def test_focal_downweights_easy_examples():
    logits = torch.tensor([[8.0, 0.0], [0.2, 0.0]])  # easy, hard (both correct class 0)
    y = torch.tensor([0, 0])
    per = FocalLoss(gamma=2.0, reduction="none")(logits, y)
    ce = F.cross_entropy(logits, y, reduction="none")
    assert (per / ce)[0] < 1e-6 and (per / ce)[1] > 0.2


def test_reductions_and_gradient(batch):
    logits, y = batch
    logits = logits.clone().requires_grad_(True)
    none = FocalLoss(gamma=2.0, reduction="none")(logits, y)
    assert none.shape == (32,)
    assert FocalLoss(gamma=2.0, reduction="sum")(logits, y).item() == pytest.approx(none.sum().item(), rel=1e-6)
    FocalLoss(gamma=2.0)(logits, y).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bf16_logits_are_computed_in_fp32(batch):
    logits, y = batch
    out = FocalLoss(gamma=2.0)(logits.bfloat16(), y)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference_focal(logits.bfloat16().float(), y, 2.0), rel=1e-5)


def test_inverse_frequency_alpha():
    a = inverse_frequency_alpha([10, 30, 0, 20])
    assert a[2] == 0.0
    assert a[0] / a[1] == pytest.approx(3.0) and a[0] / a[3] == pytest.approx(2.0)
    assert sum(a) / 3 == pytest.approx(1.0)  # mean 1 over present classes


def test_create_loss_and_alpha_size_check(batch):
    logits, y = batch
    assert isinstance(create_loss("ce"), torch.nn.CrossEntropyLoss)
    with pytest.raises(ValueError, match="alpha has 3 weights but there are 7 classes"):
        FocalLoss(alpha=[1, 1, 1])(logits, y)
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("hinge")


def test_logit_shift_is_cross_entropy_of_shifted_logits(batch):
    logits, y = batch
    shift = [math.log(p) for p in (0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05)]
    got = FocalLoss(gamma=0.0, logit_shift=shift)(logits, y)
    torch.testing.assert_close(got, F.cross_entropy(logits + torch.tensor(shift), y), rtol=1e-6, atol=1e-6)
    focal = FocalLoss(gamma=2.0, logit_shift=shift)(logits, y).item()
    assert focal == pytest.approx(reference_focal(logits + torch.tensor(shift), y, 2.0), rel=1e-5)
    # The loss pushes a rare class's own logit further than plain cross-entropy does.
    x = torch.zeros(1, 7, requires_grad=True)
    FocalLoss(gamma=0.0, logit_shift=shift)(x, torch.tensor([6])).backward()
    plain = torch.zeros(1, 7, requires_grad=True)
    F.cross_entropy(plain, torch.tensor([6])).backward()
    assert x.grad[0, 6] < plain.grad[0, 6] < 0
    with pytest.raises(ValueError, match="logit_shift has 2 offsets but there are 7 classes"):
        FocalLoss(logit_shift=[0.0, 0.0])(logits, y)


def test_loss_logit_adjust_from_config():
    labels, classes = [0] * 30 + [1] * 10 + [2] * 5, ["a", "b", "c"]
    cfg = load_config(None, ["loss.name=ce", "loss.logit_adjust=1.5"])
    loss = build.loss_from(cfg, labels, classes)
    assert isinstance(loss, FocalLoss) and loss.gamma == 0.0 and loss.alpha is None  # cross-entropy, shifted
    torch.testing.assert_close(loss.logit_shift, 1.5 * torch.tensor([30 / 45, 10 / 45, 5 / 45]).log())
    # With twins, the prior is what an epoch shows: half of a's and b's clips played backwards as the other.
    cfg = load_config(None, ["loss.logit_adjust=1.0", "data.reverse_pairs=[[a, b]]"])
    torch.testing.assert_close(build.loss_from(cfg, labels, classes).logit_shift,
                               torch.tensor([20 / 45, 20 / 45, 5 / 45]).log())
    assert build.loss_from(load_config(None, []), labels, classes).logit_shift is None
    with pytest.raises(ConfigError, match="loss.logit_adjust=-1.0: must be >= 0"):
        load_config(None, ["loss.logit_adjust=-1.0"])


def test_logit_adjust_prior_follows_balanced_sampling():
    labels, classes = [0] * 36 + [1] * 9 + [2] * 4, ["a", "b", "c"]
    shift = lambda *o: build.loss_from(load_config(None, ["loss.logit_adjust=1.0", *o]), labels, classes).logit_shift
    # sqrt: weight count^-1/2 per video, so a class is drawn in proportion to sqrt(count): 6 : 3 : 2.
    torch.testing.assert_close(shift("data.balance=sqrt"), torch.tensor([6 / 11, 3 / 11, 2 / 11]).log())
    torch.testing.assert_close(shift("data.balance=inverse"), torch.full((3,), 1 / 3).log())  # uniform: no shift but a constant
