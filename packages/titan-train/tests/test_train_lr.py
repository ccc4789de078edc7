"""LR schedule: warm-up, linear/cosine/sqrt decay, WSD, minimum."""

import math

import pytest
import torch
from titan_train.trainer.optim import (
    OptimizerSettings,
    ScheduleSettings,
    build_lr_scheduler,
    build_optimizer,
    lr_factor,
)


def test_warmup_then_linear_decay_matches_torchtitan_by_hand():
    # torchtitan v0.2.2 with warmup 2 of 10 steps: step k <= 2 trains at k / 2 (peak at step 2, not
    # 3), one stable step, then 8 decay steps of which the last would be the virtual step 11.
    s = ScheduleSettings(steps=10, warmup_steps=2, min_lr_factor=0.1)
    f = [lr_factor(k, s) for k in range(1, 11)]
    want = [0.5, 1.0, 1.0] + [0.1 + 0.9 * (1 - j / 8) for j in range(1, 8)]
    assert f == pytest.approx(want)
    assert f[-1] > 0.1 and not s.notes()


def test_wsd_keeps_peak_until_decay():
    s = ScheduleSettings(steps=100, warmup_steps=10, decay_ratio=0.2, decay_type="cosine")
    assert s.phases() == (10, 71, 20)
    assert lr_factor(10, s) == 1.0 and lr_factor(81, s) == 1.0
    assert lr_factor(82, s) == pytest.approx(0.5 * (1 + math.cos(math.pi / 20)))
    assert lr_factor(100, s) == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))


def test_warmup_and_decay_overlap_is_clamped_and_said():
    # 6 warm-up steps + 0.8 x 10 decay steps do not fit in 10: the decay is cut to the 4 steps
    # left, so the peak is reached at step 6 and the LR never jumps.
    s = ScheduleSettings(steps=10, warmup_steps=6, decay_ratio=0.8)
    assert s.phases() == (6, 1, 4)
    f = [lr_factor(k, s) for k in range(1, 11)]
    assert f == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert len(s.notes()) == 1 and "decay is cut to 4 steps" in s.notes()[0]
    assert "capped at 10" in ScheduleSettings(steps=10, warmup_steps=12).notes()[0]
    assert [lr_factor(k, ScheduleSettings(steps=3, warmup_steps=12)) for k in (1, 2, 3)] == \
        pytest.approx([1 / 3, 2 / 3, 1.0])


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
    assert lrs == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3])
