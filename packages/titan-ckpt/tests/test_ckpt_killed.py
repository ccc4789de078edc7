"""A process killed in the middle of an async save: the previous checkpoint still loads, the
partial one is never loaded and is removed by the next run."""

import multiprocessing
import os

import torch
from ckpt_testlib import make_model
from titan_ckpt import CheckpointManager, ModelState


def _die_mid_async_save(folder: str) -> None:
    from torch.distributed.checkpoint import filesystem

    model = make_model()
    states = {"model": ModelState(model), "train_state": {"step": 1}}
    mgr = CheckpointManager(folder, interval=1, async_mode="async")
    mgr.save(1, states)
    mgr.wait()
    write_item = filesystem._write_item

    def write_one_item_then_die(*args, **kwargs):
        write_item(*args, **kwargs)
        os._exit(3)  # like SIGKILL: no cleanup, no exception handlers

    filesystem._write_item = write_one_item_then_die
    with torch.no_grad():
        model.output.weight.add_(1.0)
    states["train_state"]["step"] = 2
    mgr.save(2, states)
    mgr.wait()  # never returns


def test_async_save_killed_mid_write_leaves_previous_checkpoint_loadable(tmp_path):
    # fork is fast, but a process that has touched CUDA cannot fork a child that uses it.
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    proc = multiprocessing.get_context(method).Process(target=_die_mid_async_save, args=(str(tmp_path),))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "step-1" and names[1].startswith("step-2.partial-") and len(names) == 2
    partial = tmp_path / names[1]
    assert any(p.stat().st_size > 0 for p in partial.iterdir())  # data was being written

    mgr = CheckpointManager(tmp_path, interval=1)  # the next run
    assert not partial.exists()
    model = make_model(seed=4)
    train = {"step": 0}
    assert mgr.load({"model": ModelState(model), "train_state": train}) == 1
    assert train == {"step": 1}
    assert torch.equal(model.output.weight, make_model().output.weight)
    assert mgr.save(2, {"model": ModelState(model), "train_state": train}) and mgr.steps() == [1, 2]
