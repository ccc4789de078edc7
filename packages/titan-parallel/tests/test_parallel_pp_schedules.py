"""Every pipeline schedule on 2 gloo ranks against one process: same losses and gradients (SGD).

The stage modules start on the meta device and initialize themselves through the model's
name-seeded init_weights(), the flow the trainer uses (no seed checkpoint).
"""

from __future__ import annotations

import pytest
import torch
from test_parallel_pp_model import ToyModel, batch, loss_fn, reference_run
from titan_mesh import ParallelDims
from titan_mesh.testing import DistributedPool
from titan_parallel.pipeline import (
    SCHEDULES,
    build_pipeline_schedule,
    module_order_of,
    pipeline_split,
    pipeline_step,
)

# schedule -> stages per rank (4 virtual stages on 2 ranks where the schedule takes several)
CASES = {"GPipe": 1, "1F1B": 1, "Interleaved1F1B": 2, "LoopedBFS": 2, "InterleavedZeroBubble": 2,
         "ZBVZeroBubble": 2, "DualPipeV": 2}
EXTRA = [("InterleavedZeroBubble", 1), ("Interleaved1F1B", 4)]  # one stage; 8 stages of 1 layer
STEPS, LR = 2, 0.5


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(2) as p:
        yield p


def run_pipeline(schedule: str, stages_per_rank: int, n_layers: int = 4) -> dict:
    from test_parallel_pp_model import ToyConfig

    cfg = ToyConfig(n_layers=n_layers)
    dims = ParallelDims(pp=2, dp_shard=1, world_size=2)
    dims.build_mesh("cpu")
    pp_mesh = dims.get_mesh("pp")
    with torch.device("meta"):
        model = ToyModel(cfg)
    parts = pipeline_split(model, pp_mesh, module_order=module_order_of(model), schedule=schedule,
                           stages_per_rank=stages_per_rank)
    for module in parts.modules:
        module.to_empty(device="cpu")
        module.init_weights()
    tokens, labels = batch(8)
    pipe = build_pipeline_schedule(parts, pp_mesh, loss_fn=loss_fn, microbatch_size=2, local_batch_size=8)
    params = [p for m in parts.modules for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=LR)
    losses, grads = [], {}
    for step in range(STEPS):
        opt.zero_grad()
        loss = pipeline_step(pipe, tokens if parts.is_first else None, labels if parts.is_last else None)
        losses.append(None if loss is None else loss.item())
        if step == 0:
            grads = {n: p.grad.clone() for m in parts.modules for n, p in m.named_parameters()}
        opt.step()
    ref_losses, ref_grads = reference_run(tokens, labels, steps=STEPS, lr=LR, cfg=cfg)
    return {
        "stage_ids": parts.stage_ids,
        "losses": losses,
        "ref_losses": ref_losses,
        "grad_err": max((grads[n] - ref_grads[n]).abs().max().item() for n in grads),
        "names": sorted(grads),
        "all_names": sorted(ref_grads),
    }


def _check(results: list[dict]) -> None:
    names = [n for r in results for n in r["names"]]
    assert sorted(names) == results[0]["all_names"], "every parameter lives on exactly one rank"
    last = [r for r in results if r["losses"][0] is not None]
    assert len(last) == 1
    assert last[0]["losses"] == pytest.approx(last[0]["ref_losses"], abs=1e-5)
    assert last[0]["ref_losses"][1] < last[0]["ref_losses"][0] - 1e-3  # SGD moved: step 2 checks it
    for r in results:
        assert r["grad_err"] < 1e-5, r


def test_registry_covers_every_schedule():
    assert sorted(CASES) == sorted(SCHEDULES)


@pytest.mark.parametrize("schedule", list(CASES))
def test_schedule_matches_one_process(pool, schedule):
    results = pool.run(run_pipeline, schedule, CASES[schedule])
    _check(results)
    if schedule in ("ZBVZeroBubble", "DualPipeV"):
        assert [r["stage_ids"] for r in results] == [[0, 3], [1, 2]]  # V-shaped placement
    elif CASES[schedule] == 2:
        assert [r["stage_ids"] for r in results] == [[0, 2], [1, 3]]


@pytest.mark.parametrize(("schedule", "stages_per_rank"), EXTRA)
def test_other_stage_counts(pool, schedule, stages_per_rank):
    _check(pool.run(run_pipeline, schedule, stages_per_rank, n_layers=max(4, 2 * stages_per_rank)))
