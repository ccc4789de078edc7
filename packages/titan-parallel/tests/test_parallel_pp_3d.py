"""Pipeline parallel combined with FSDP (pp2 x dp2) and with TP (pp2 x tp2) on 4 gloo ranks,
against one process on the whole batch: same losses and gradients (SGD).

Stages are split from a meta model, sharded, then materialized and initialized by the model's
name-seeded init_weights(): the trainer's flow, with no seed checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from test_parallel_pp_model import ToyModel, batch, loss_fn, reference_run
from titan_mesh import ParallelDims
from titan_mesh.testing import DistributedPool
from titan_parallel import apply_fsdp, apply_tp, init_weights
from titan_parallel.pipeline import (
    build_pipeline_schedule,
    module_order_of,
    pipeline_split,
    pipeline_step,
)
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

STEPS, LR, LOCAL_BATCH = 2, 0.5, 8
TP_PLAN = {
    **{f"layers.*.attention.{w}": ColwiseParallel() for w in ("wq", "wk", "wv")},
    "layers.*.attention.wo": RowwiseParallel(),
    "layers.*.feed_forward.w1": ColwiseParallel(),
    "layers.*.feed_forward.w2": RowwiseParallel(),
}


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(4) as p:
        yield p


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def run_3d(schedule: str, stages_per_rank: int, axis: str) -> dict:
    dims = ParallelDims(pp=2, dp_shard=2 if axis == "fsdp" else 1, tp=2 if axis == "tp" else 1, world_size=4)
    dims.build_mesh("cpu")
    pp_mesh = dims.get_mesh("pp")
    with torch.device("meta"):
        model = ToyModel()
    parts = pipeline_split(model, pp_mesh, module_order=module_order_of(model), schedule=schedule,
                           stages_per_rank=stages_per_rank)
    for module in parts.modules:
        if axis == "tp":
            apply_tp(module, dims.get_mesh("tp"), TP_PLAN)
        else:  # microbatches reuse the gathered parameters: no resharding between them
            apply_fsdp(module, dims.get_mesh("dp_shard_cp"), reshard_after_forward="never")
        init_weights(module, device="cpu")
    tokens, labels = batch(LOCAL_BATCH * dims.dp_shard)
    dp_rank = dims.get_mesh("dp_shard").get_local_rank() if axis == "fsdp" else 0
    mine = slice(dp_rank * LOCAL_BATCH, (dp_rank + 1) * LOCAL_BATCH)
    pipe = build_pipeline_schedule(parts, pp_mesh, loss_fn=loss_fn, microbatch_size=2,
                                   local_batch_size=LOCAL_BATCH)
    opt = torch.optim.SGD([p for m in parts.modules for p in m.parameters()], lr=LR)
    losses, grads = [], {}
    for step in range(STEPS):
        opt.zero_grad()
        loss = pipeline_step(pipe, tokens[mine], labels[mine])
        losses.append(None if loss is None else loss.item())
        if step == 0:
            grads = {n: _full(p.grad) for m in parts.modules for n, p in m.named_parameters()}
        opt.step()
    ref_losses, ref_grads = reference_run(tokens, labels, steps=STEPS, lr=LR)
    sharded = any(isinstance(p, DTensor) for m in parts.modules for p in m.parameters())
    return {"losses": losses, "ref_losses": ref_losses, "sharded": sharded,
            "grad_err": max((grads[n] - ref_grads[n]).abs().max().item() for n in grads),
            "names": sorted(grads), "all_names": sorted(ref_grads)}


@pytest.mark.parametrize(("axis", "schedule", "stages_per_rank"), [
    ("fsdp", "1F1B", 1), ("fsdp", "Interleaved1F1B", 2), ("fsdp", "ZBVZeroBubble", 2),
    ("tp", "1F1B", 1), ("tp", "InterleavedZeroBubble", 2),
])
def test_pipeline_with_fsdp_or_tp_matches_one_process(pool, axis, schedule, stages_per_rank):
    results = pool.run(run_3d, schedule, stages_per_rank, axis)
    assert all(r["sharded"] for r in results)
    assert sorted({n for r in results for n in r["names"]}) == results[0]["all_names"]
    last = [r["losses"] for r in results if r["losses"][0] is not None]
    assert len(last) == 2  # the two dp (or tp) ranks holding the last stage
    # FSDP: each dp rank's loss is over its half of the batch; their mean is the whole batch's
    mean = [sum(step) / len(step) for step in zip(*last)]
    assert mean == pytest.approx(results[0]["ref_losses"], abs=1e-5)
    for r in results:
        assert r["grad_err"] < 1e-5, r
