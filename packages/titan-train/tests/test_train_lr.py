"""LR schedule: warm-up, linear/cosine/sqrt decay, WSD, minimum."""

import pytest
import torch
from titan_train.trainer.optim import (
    OptimizerSettings,
    ScheduleSettings,
    build_lr_scheduler,
    build_optimizer,
    lr_factor,
)


def test_warmup_then_linear_decay_to_min():
    s = ScheduleSettings(steps=10, warmup_steps=2, min_lr_factor=0.1)
    f = [lr_factor(k, s) for k in range(1, 11)]
    assert f[0] == pytest.approx(1 / 3) and f[1] == pytest.approx(2 / 3)
    assert f[2] == 1.0 and f[3] == pytest.approx(0.1 + 0.9 * (1 - 1 / 7))
    assert f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[2:], f[3:]))


def test_wsd_keeps_peak_until_decay():
    s = ScheduleSettings(steps=100, warmup_steps=10, decay_ratio=0.2, decay_type="cosine")
    assert lr_factor(50, s) == 1.0 and lr_factor(80, s) == 1.0
    assert 0 < lr_factor(90, s) < 1 and lr_factor(100, s) == pytest.approx(0.0)


def test_scheduler_and_no_decay_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimizerSettings(lr=1.0, weight_decay=0.1, implementation="foreach"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert len(opt.param_groups[0]["params"]) == 1  # only the Linear weight decays
    sched = build_lr_scheduler(opt, ScheduleSettings(steps=4, warmup_steps=1))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 0.5, 0.0])
