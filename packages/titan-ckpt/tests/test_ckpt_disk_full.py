"""A disk that fills up during a save: a CheckpointError that says so (how much was needed, how
much is free, which checkpoint is intact), the unfinished save removed, earlier ones untouched."""

import errno

import pytest
import torch
from ckpt_testlib import make_model
from titan_ckpt import CheckpointError, CheckpointManager, ModelState


@pytest.fixture()
def full_disk(monkeypatch):
    """Writes fail as on a full disk once armed: the first item lands, then ENOSPC."""
    from torch.distributed.checkpoint import filesystem

    real = filesystem._write_item
    armed = [False]

    def write(*args, **kwargs):
        out = real(*args, **kwargs)
        if armed[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return out

    monkeypatch.setattr(filesystem, "_write_item", write)
    return armed


@pytest.mark.parametrize("mode", ["disabled", "async"])
def test_full_disk_is_named_and_the_previous_checkpoint_stays(tmp_path, full_disk, mode):
    model = make_model()
    states = {"model": ModelState(model), "train_state": {"step": 1}}
    mgr = CheckpointManager(tmp_path, interval=1, async_mode=mode)
    mgr.save(1, states)
    mgr.wait()
    full_disk[0] = True
    with torch.no_grad():
        model.output.weight.add_(1.0)
    states["train_state"]["step"] = 2
    with pytest.raises(CheckpointError) as e:
        mgr.save(2, states)
        mgr.wait()
    text = str(e.value)
    assert f"the disk holding {tmp_path} is full: saving step 2 needs about" in text
    assert "GiB is free now" in text and "step-1 is the newest complete checkpoint" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]  # no half-written step-2 left
    full_disk[0] = False
    again = make_model(seed=3)
    train = {"step": 0}
    assert CheckpointManager(tmp_path, interval=1).load({"model": ModelState(again), "train_state": train}) == 1
    assert train == {"step": 1} and torch.equal(again.output.weight, make_model().output.weight)
    mgr.close()
