"""Learning-rate schedules: warmup + plateau (ReduceLROnPlateau on validation loss) and its checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from actionrec.engine import checkpoint as ck
from actionrec.engine.optim import WarmupPlateauLR, create_scheduler

LR = 0.1


def make(warmup: int = 4, patience: int = 2, factor: float = 0.5, min_ratio: float = 0.2):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([{"params": [p], "lr": LR, "initial_lr": LR}], lr=LR)
    return opt, create_scheduler(opt, warmup_steps=warmup, total_steps=0, min_ratio=min_ratio, kind="plateau",
                                 patience=patience, factor=factor)


def lr(opt) -> float:
    return opt.param_groups[0]["lr"]


def test_warms_up_linearly_then_stays_flat_without_validation():
    opt, sched = make(warmup=4)
    assert isinstance(sched, WarmupPlateauLR)
    seen = [lr(opt)]
    for _ in range(10):
        opt.step()
        sched.step()
        seen.append(lr(opt))
    assert seen[:4] == pytest.approx([LR * k / 4 for k in (1, 2, 3, 4)])  # the cosine's warmup ramp
    assert seen[4:] == pytest.approx([LR] * 7)


def test_drops_by_factor_after_patience_plus_one_bad_validations_and_stops_at_the_floor():
    opt, sched = make(warmup=0, patience=2, factor=0.5, min_ratio=0.2)
    sched.step_metric(1.0)  # first validation: the best so far
    for _ in range(2):
        sched.step_metric(1.0)
        assert lr(opt) == pytest.approx(LR)
    sched.step_metric(1.0)  # the third validation without improvement
    assert lr(opt) == pytest.approx(LR / 2)
    sched.step_metric(0.5)  # improvement: the count starts again
    for _ in range(3):
        sched.step_metric(0.6)
    assert lr(opt) == pytest.approx(LR / 4)
    for _ in range(20):
        sched.step_metric(0.6)
    assert lr(opt) == pytest.approx(LR * 0.2)  # never below initial lr * min_ratio
    for _ in range(5):
        sched.step()  # optimizer steps after warmup leave the lr alone
    assert lr(opt) == pytest.approx(LR * 0.2)


def test_validations_during_warmup_are_ignored():
    opt, sched = make(warmup=10, patience=0)
    for _ in range(3):
        sched.step_metric(1.0)
    assert sched.plateau.num_bad_epochs == 0 and sched.plateau.best == float("inf")
    assert lr(opt) == pytest.approx(LR / 10)


def run(opt, sched, losses, steps_between=3):
    out = []
    for loss in losses:
        for _ in range(steps_between):
            opt.step()
            sched.step()
        sched.step_metric(loss)
        out.append(lr(opt))
    return out


def test_state_round_trips_through_a_checkpoint_and_the_resumed_schedule_continues(tmp_path):
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85]
    opt, sched = make(warmup=5, patience=1)
    straight = run(opt, sched, losses)
    assert min(straight) < LR  # the run does drop

    opt_a, sched_a = make(warmup=5, patience=1)
    first = run(opt_a, sched_a, losses[:4])
    path = tmp_path / "ckpt.pt"
    torch.save({"optimizer": opt_a.state_dict(), "scheduler": sched_a.state_dict()}, path)
    saved = torch.load(path, weights_only=True)  # plain numbers only: loads without unpickling code
    opt_b, sched_b = make(warmup=5, patience=1)
    opt_b.load_state_dict(saved["optimizer"])
    sched_b.load_state_dict(saved["scheduler"])
    assert sched_b.state_dict() == sched_a.state_dict()
    assert first + run(opt_b, sched_b, losses[4:]) == pytest.approx(straight)


def test_resuming_with_the_other_scheduler_kind_is_a_clear_error(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    cosine = create_scheduler(opt, warmup_steps=0, total_steps=10, min_ratio=0.1)
    plateau = create_scheduler(opt, warmup_steps=0, total_steps=10, min_ratio=0.1, kind="plateau")
    ckpt = ck.make_checkpoint(model=model, optimizer=opt, scheduler=cosine, scaler=None, epoch=0, step=0, config={},
                              class_names=["a", "b"])
    with pytest.raises(ck.CheckpointError, match="optim.scheduler=cosine, resumed with plateau"):
        ck.restore_training_state(ckpt, model=model, optimizer=opt, scheduler=plateau, scaler=None,
                                  class_names=["a", "b"], source="x.pt")
    with pytest.raises(ValueError, match="unknown scheduler"):
        create_scheduler(opt, warmup_steps=0, total_steps=10, min_ratio=0.1, kind="step")
