"""Knowledge distillation: the loss formula, the training-loop wiring, config checks and tools/train.py."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn as nn

from actionrec.config import ConfigError, load_config
from actionrec.engine.distill import Distiller, distillation_loss
from actionrec.engine.loop import train_one_epoch
from actionrec.engine.optim import create_scheduler
from actionrec.models.factory import create_model
from actionrec.models.losses import FocalLoss
from tests.tools.deploy_helpers import TINY_MODEL, deploy_dataset, load_tool  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """T^2 * mean over the batch of sum_k p_k (log p_k - log q_k), p = softmax(teacher / T), q = softmax(student / T)."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [v / t for v in s_row]
        zt = [v / t for v in t_row]
        ls = [v - math.log(sum(math.exp(u) for u in zs)) for v in zs]
        lt = [v - math.log(sum(math.exp(u) for u in zt)) for v in zt]
        total += sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))
    return t * t * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_is_t_squared_kl_of_softened_logits(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    assert distillation_loss(s, t, temperature).item() == pytest.approx(_kl_by_hand(s, t, temperature), rel=1e-5)
    assert distillation_loss(t, t, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_distiller_adds_weight_times_the_kl_to_the_focal_loss():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    clips, labels = torch.randn(3, 12), torch.tensor([0, 2, 3])
    student_logits = torch.randn(3, 4)
    focal = FocalLoss(gamma=2.0)
    term = Distiller(teacher, weight=0.7, temperature=3.0)(clips, student_logits)
    with torch.no_grad():
        t_logits = teacher(clips)
    want = focal(student_logits, labels).item() + 0.7 * _kl_by_hand(student_logits, t_logits, 3.0)
    assert focal(student_logits, labels).item() + term.item() == pytest.approx(want, rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


class _Zero(nn.Module):
    def forward(self, logits, labels):
        return logits.sum() * 0.0


def test_training_with_only_the_soft_term_pulls_the_student_to_the_teacher():
    kw = dict(num_classes=5, backbone="test_resnet", hidden_size=8, dropout=0.0, lstm_dropout=0.0)
    torch.manual_seed(0)
    student, teacher = create_model("cnn_lstm", **kw), create_model("cnn_lstm", **kw)
    with torch.no_grad():
        teacher.head.fc.weight.mul_(20.0)  # confident, distinct teacher predictions
    clips = torch.randn(4, 3, 3, 32, 32)
    batches = [{"clip": clips, "label": torch.zeros(4, dtype=torch.long), "failed": [], "index": torch.arange(4)}] * 15
    distill = Distiller(teacher, weight=1.0, temperature=2.0)

    def kl() -> float:
        student.eval()
        with torch.no_grad():
            return distillation_loss(student(clips), teacher(clips), 2.0).item()

    before = kl()
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    out = train_one_epoch(student, batches, _Zero(), opt, create_scheduler(opt, warmup_steps=0, total_steps=15, min_ratio=1.0),
                          epoch=0, autocast=contextlib.nullcontext, scaler=torch.amp.GradScaler("cpu", enabled=False),
                          show_progress=False, distill=distill)
    assert out["steps"] == 15 and out["loss"] > 0  # the logged loss includes the soft term
    assert kl() < 0.5 * before


def test_distill_config_checks(tmp_path):
    cfg = load_config(None)
    assert (cfg.train.distill.teacher, cfg.train.distill.weight, cfg.train.distill.temperature) == ("", 1.0, 4.0)
    with pytest.raises(ConfigError, match=r"train.distill.teacher='.*nope.pt': file not found"):
        load_config(None, [f"train.distill.teacher={tmp_path / 'nope.pt'}"])
    with pytest.raises(ConfigError, match="train.distill.temperature=0.0: must be > 0"):
        load_config(None, ["train.distill.temperature=0"])
    with pytest.raises(ConfigError, match="train.distill.weight=-1.0: must be >= 0"):
        load_config(None, ["train.distill.weight=-1"])
    (tmp_path / "t.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="cannot be used with train.cache_features"):
        load_config(None, [f"train.distill.teacher={tmp_path / 't.pt'}", "model.freeze_backbone=true",
                           "train.cache_features=true"])


def test_train_distills_from_a_checkpoint_and_refuses_a_teacher_of_other_classes(trained_checkpoint, deploy_dataset,
                                                                               tmp_path):
    from actionrec import build

    tool = load_tool("train")
    args = ["--config", "configs/quickstart.yaml", f"data.root={deploy_dataset}", *TINY_MODEL, "train.epochs=1",
            "train.max_steps_per_epoch=2", "train.amp=none", "model.hidden_size=8", f"train.output_dir={tmp_path}",
            f"train.distill.teacher={trained_checkpoint}", "train.distill.weight=0.5"]
    res = tool.main(tool.parse_args([*args, "train.name=student"]))
    student = tmp_path / "student" / "last.pt"
    assert res["last_val"]["top1"] is not None
    assert "distilling from" in (tmp_path / "student" / "train.log").read_text()
    # The student checkpoint loads for inference without the teacher file (its path is not needed there).
    cfg, model, _ = build.model_from_checkpoint(student)
    assert cfg.train.distill.teacher == "" and model.head.fc.in_features != 0
    # A teacher trained on another class list is refused with the key's name.
    bad = torch.load(trained_checkpoint, weights_only=True)
    bad["class_names"] = list(reversed(bad["class_names"]))
    torch.save(bad, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"train.distill.teacher=.*other.pt: the teacher was trained on classes"):
        tool.main(tool.parse_args([*args[:-2], f"train.distill.teacher={tmp_path / 'other.pt'}", "train.name=bad"]))
