"""On a GPU: async saves of CUDA tensors capture the values at save time, even when the
parameters change right after wait_for_staging()."""

import pytest
import torch
from ckpt_testlib import make_model, make_optimizer, train_step
from titan_ckpt import CheckpointManager, ModelState, OptimizerState
from titan_mesh.testing import gpu_marks

pytestmark = gpu_marks(1)


@pytest.mark.parametrize("mode", ["async", "async_with_pinned_mem"])
def test_cuda_state_is_captured_at_save_time(tmp_path, mode):
    model = make_model().cuda()
    opt = make_optimizer(model, "adamw")
    states = {"model": ModelState(model), "optimizer": OptimizerState(model, opt)}
    with CheckpointManager(tmp_path, interval=1, async_mode=mode) as mgr:
        for step in (1, 2):
            train_step(model, opt, step)
            mgr.save(step, states)
            expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
            mgr.wait_for_staging()
            with torch.no_grad():  # change everything while the write is still running
                for p in model.parameters():
                    p.mul_(-3.0)
    fresh = make_model(seed=1).cuda()
    assert CheckpointManager(tmp_path, interval=1).load({"model": ModelState(fresh)}) == 2
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, expected[k]), k
