"""comm.init_timeout_seconds covers set-up and the first step; comm.train_timeout_seconds the rest;
a caller's process group gets its long timeout back when the run ends."""

import torch
import torch.distributed as dist
from titan_mesh.testing import DistributedPool
from train_e2e_helpers import train


def _run_and_record(out: str) -> tuple[list, float]:
    import titan_train.trainer.build_run as build_run

    calls = []
    real = build_run.set_collective_timeout

    def recording(timeout_s, groups, **kw):
        calls.append((timeout_s, len(list(groups)) > 0, kw.get("barrier", True)))
        return real(timeout_s, groups, **kw)

    build_run.set_collective_timeout = recording
    try:
        train(out, "--training.steps", "3", "--comm.train_timeout_seconds", "42",
              "--comm.init_timeout_seconds", "77")
    finally:
        build_run.set_collective_timeout = real
    after = dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    return calls, after


def test_timeout_is_lowered_after_the_first_step_and_restored(tmp_path):
    with DistributedPool(world_size=2) as pool:
        for calls, after in pool.run(_run_and_record, str(tmp_path)):
            # lowered once after step 1 (with a barrier), restored before the final save (without)
            assert calls == [(42, True, True), (77, True, False)]
            assert after == 77.0
