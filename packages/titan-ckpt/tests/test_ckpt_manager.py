"""CheckpointManager in one process: exact round trips, async modes, resume, pruning, exclusion."""

import json
import os

import pytest
import torch
from ckpt_testlib import (
    CountingLoader,
    assert_same,
    full_states,
    make_model,
    make_optimizer,
    train_step,
)
from titan_ckpt import CheckpointError, CheckpointManager, ModelState, OptimizerState
from titan_ckpt.layout import MARKER


def _setup(opt_kind="adamw", seed=0):
    model = make_model(seed)
    opt = make_optimizer(model, opt_kind)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    loader = CountingLoader()
    train = {"step": 0, "tokens": 0}
    states = {"model": ModelState(model), "optimizer": OptimizerState(model, opt),
              "lr_scheduler": sched, "dataloader": loader, "train_state": train}
    return model, opt, sched, loader, train, states


def _advance(model, opt, sched, loader, train, step):
    loss = train_step(model, opt, step)
    sched.step()
    loader.position += 16
    train.update(step=step, tokens=train["tokens"] + 16)
    return loss


@pytest.mark.parametrize("mode,opt_kind", [("disabled", "adamw"), ("async", "sgd"),
                                           ("async_with_pinned_mem", "adamw")])
def test_round_trip_is_exact_and_training_continues_identically(tmp_path, mode, opt_kind):
    model, opt, sched, loader, train, states = _setup(opt_kind)
    with CheckpointManager(tmp_path, interval=2, async_mode=mode) as mgr:
        for step in range(1, 6):  # saves at 2 and 4: the second reuses staging buffers
            _advance(model, opt, sched, loader, train, step)
            assert mgr.save(step, states) == (step % 2 == 0)
            mgr.wait_for_staging()
        expected = full_states(model, opt)
        # Step 5 changed everything after the save at step 4: resume must restore step 4.
        model2, opt2, sched2, loader2, train2, states2 = _setup(opt_kind, seed=7)
        mgr.wait()
    with CheckpointManager(tmp_path, interval=2, async_mode=mode) as mgr2:
        assert mgr2.load(states2) == 4
    assert train2 == {"step": 4, "tokens": 64} and loader2.position == 64
    assert sched2.last_epoch == 4 and opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["initial_lr"] / 5)
    # Replaying step 5 from the restored state reproduces the original run exactly.
    model3, opt3, sched3, loader3, train3, states3 = _setup(opt_kind)
    for step in range(1, 5):
        _advance(model3, opt3, sched3, loader3, train3, step)
    assert_same(full_states(model2, opt2)[0], full_states(model3, opt3)[0], "model")
    assert_same(full_states(model2, opt2)[1], full_states(model3, opt3)[1], "optimizer")
    loss_a = _advance(model2, opt2, sched2, loader2, train2, 5)
    loss_b = _advance(model3, opt3, sched3, loader3, train3, 5)
    assert loss_a == loss_b
    assert_same(full_states(model2, opt2)[0], expected[0], "model after replayed step")


def test_keep_latest_k_auto_resume_and_chosen_step(tmp_path):
    model, opt, sched, loader, train, states = _setup()
    mgr = CheckpointManager(tmp_path, interval=1, keep_latest_k=2)
    values = {}
    for step in range(1, 6):
        _advance(model, opt, sched, loader, train, step)
        mgr.save(step, states)
        values[step] = model.output.weight.detach().clone()
    assert mgr.steps() == [4, 5] and mgr.latest_step() == 5
    assert sorted(os.listdir(tmp_path)) == ["step-4", "step-5"]
    info = json.loads((tmp_path / "step-5" / MARKER).read_text())
    assert info["step"] == 5 and info["kind"] == "full" and info["states"] == sorted(states)
    model2, *_, states2 = _setup(seed=3)
    assert mgr.load(states2, step=4) == 4
    assert torch.equal(model2.output.weight, values[4])
    with pytest.raises(CheckpointError, match=r"step-3 is not a complete checkpoint; complete steps .*\[4, 5\]"):
        mgr.load(states2, step=3)
    # interval 1: step 6 is saved, and keep_latest_k=2 then prunes step 4
    assert mgr.save(6, states) and mgr.steps() == [5, 6]
    assert sorted(os.listdir(tmp_path)) == ["step-5", "step-6"]
    mgr.close()


def test_auto_resume_prefers_the_training_state_over_newer_model_only_weights(tmp_path):
    from titan_ckpt import checkpoint_info, list_checkpoints

    model, opt, sched, loader, train, states = _setup()
    mgr = CheckpointManager(tmp_path, interval=1)
    mgr.save_model_only(0, model, dtype=None)  # a seed checkpoint is model-only
    assert mgr.kind(0) == "model_only" and mgr.latest_step("full") is None
    model2, *_, states2 = _setup(seed=3)
    assert mgr.load(states2, exclude=("optimizer", "lr_scheduler", "dataloader", "train_state")) == 0
    _advance(model, opt, sched, loader, train, 1)
    mgr.save(1, states)
    _advance(model, opt, sched, loader, train, 2)
    mgr.save_model_only(2, model)  # newer weights alone, as an export in the same folder
    assert mgr.steps() == [0, 1, 2] and mgr.steps("full") == [1] and mgr.steps("model_only") == [0, 2]
    assert mgr.latest_step() == 2 and mgr.latest_step("full") == 1 and mgr.kind(2) == "model_only"
    assert mgr.kind(7) is None
    with pytest.raises(CheckpointError, match="kind 'partial' is not one of"):
        mgr.latest_step("partial")
    assert list_checkpoints(tmp_path, "full") == [1] and list_checkpoints(tmp_path / "nothing") == []
    assert checkpoint_info(tmp_path / "step-2")["kind"] == "model_only" and checkpoint_info(tmp_path) is None
    model3, *_, states3 = _setup(seed=5)
    assert mgr.load(states3) == 1  # not step 2: that would lose the optimizer and the data position
    assert states3["train_state"] == {"step": 1, "tokens": 16}
    mgr.close()


def test_incomplete_folders_are_ignored_then_cleaned_and_nothing_is_loaded_from_them(tmp_path):
    model, opt, sched, loader, train, states = _setup()
    mgr = CheckpointManager(tmp_path, interval=1)
    mgr.save(1, states)
    good = model.output.weight.detach().clone()
    # A run that died mid-save: a partial folder, and a step-2 folder without a marker.
    (tmp_path / "step-9.partial-abc123").mkdir()
    (tmp_path / "step-9.partial-abc123" / "__0_0.distcp").write_bytes(b"half")
    assert mgr.latest_step() == 1
    model2, *_, states2 = _setup(seed=5)
    mgr2 = CheckpointManager(tmp_path, interval=1)  # a new run cleans leftovers of dead runs
    assert not (tmp_path / "step-9.partial-abc123").exists()
    (tmp_path / "step-7").mkdir()
    assert mgr2.load(states2) == 1 and torch.equal(model2.output.weight, good)
    with pytest.raises(CheckpointError, match="step-7 exists and is not a titan-ckpt checkpoint"):
        mgr2.save(7, states)
    assert (tmp_path / "step-7").is_dir()  # never deleted: not ours


def test_exclude_keeps_current_values_and_unknown_names_are_errors(tmp_path):
    model, opt, sched, loader, train, states = _setup()
    _advance(model, opt, sched, loader, train, 1)
    mgr = CheckpointManager(tmp_path, interval=1)
    mgr.save(1, states)
    model2, opt2, sched2, loader2, train2, states2 = _setup(seed=9)
    before = full_states(model2, opt2)[1]
    assert mgr.load(states2, exclude=("optimizer", "dataloader")) == 1
    assert torch.equal(model2.output.weight, model.output.weight)
    assert_same(full_states(model2, opt2)[1], before, "excluded optimizer")
    assert loader2.position == 0 and train2["step"] == 1
    with pytest.raises(CheckpointError, match=r"exclude names 'optimiser'.*closest: 'optimizer'"):
        mgr.load(states2, exclude=("optimiser",))
    with pytest.raises(CheckpointError, match=r"holds no state 'extra'"):
        mgr.load({**states2, "extra": {"x": 1}})


def test_saving_a_step_again_replaces_it_only_when_complete(tmp_path):
    model, opt, sched, loader, train, states = _setup()
    mgr = CheckpointManager(tmp_path, interval=1)
    mgr.save(1, states, force=True)
    with torch.no_grad():
        model.output.weight.add_(1.0)
    mgr.save(1, states)
    model2, *_, states2 = _setup(seed=2)
    mgr.load(states2)
    assert torch.equal(model2.output.weight, model.output.weight)
    assert sorted(os.listdir(tmp_path)) == ["step-1"]


def test_failed_save_leaves_earlier_checkpoints_intact(tmp_path):
    model, opt, sched, loader, train, states = _setup()
    mgr = CheckpointManager(tmp_path, interval=1)
    mgr.save(1, states)

    class Broken:
        def state_dict(self):
            raise RuntimeError("disk full")

        def load_state_dict(self, sd):
            pass

    with pytest.raises(CheckpointError, match=r"step-2.partial-\w+ failed: RuntimeError: disk full"):
        mgr.save(2, {**states, "broken": Broken()})
    assert mgr.steps() == [1] and os.listdir(tmp_path) == ["step-1"]
    model2, *_, states2 = _setup(seed=4)
    assert mgr.load(states2) == 1


def test_model_only_export_and_seed_checkpoint_load_into_a_full_state_set(tmp_path):
    from titan_ckpt import create_seed_checkpoint, load_model_weights

    seed_model = make_model(11)
    path = create_seed_checkpoint(tmp_path, seed_model)
    assert path == tmp_path / "step-0"
    model, opt, sched, loader, train, states = _setup()
    mgr = CheckpointManager(tmp_path, interval=10)
    assert mgr.load(states) == 0  # only the model is restored from a seed checkpoint
    assert_same(full_states(model, opt)[0], full_states(seed_model, opt)[0] if False else
                {k: v.detach() for k, v in seed_model.state_dict().items()}, "seed")
    out = mgr.save_model_only(tmp_path / "export", model, dtype=torch.bfloat16)
    other = make_model(3).to(torch.bfloat16)
    load_model_weights(out, other)
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(other.parameters(), model.parameters()))
    info = json.loads((out / MARKER).read_text())
    assert info["kind"] == "model_only" and info["dtype"] == "bfloat16" and info["step"] is None


def test_argument_validation_names_the_bad_value(tmp_path):
    with pytest.raises(CheckpointError, match=r"async_mode 'asnyc' .*closest: 'async'"):
        CheckpointManager(tmp_path, interval=1, async_mode="asnyc")
    with pytest.raises(CheckpointError, match="interval must be an int >= 1"):
        CheckpointManager(tmp_path, interval=0)
    with pytest.raises(CheckpointError, match="keep_latest_k must be an int >= 0"):
        CheckpointManager(tmp_path, interval=1, keep_latest_k=-1)
    mgr = CheckpointManager(tmp_path, interval=1)
    *_, states = _setup()
    for bad in (-1, 1.5, "3", True, "../x"):
        with pytest.raises(CheckpointError, match="step must be a non-negative int"):
            mgr.save(bad, states)
        with pytest.raises(CheckpointError, match="step must be a non-negative int"):
            mgr.load(states, step=bad)
    with pytest.raises(CheckpointError, match=r"state name 'a\.b'"):
        mgr.save(1, {"a.b": {}})
    with pytest.raises(CheckpointError, match="wrap models in ModelState"):
        mgr.save(1, {"model": make_model()})
    disabled = CheckpointManager(tmp_path / "off", interval=1, enable=False)
    assert disabled.save(1, states) is False and disabled.load(states) is None
    assert not (tmp_path / "off").exists()
