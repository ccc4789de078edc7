"""Pipeline planning: balanced and explicit splits, stage placement, and the errors for
impossible requests (raised before any model is built)."""

from __future__ import annotations

import pytest
import torch
from test_parallel_pp_model import ToyModel
from titan_mesh.testing import fake_world
from titan_parallel.errors import ParallelConfigError
from titan_parallel.pipeline import (
    build_pipeline_schedule,
    module_order_of,
    pipeline_split,
    plan_stages,
    resolve_microbatches,
    resolve_schedule,
    stage_ids_for_rank,
    validate_pipeline,
)
from torch.distributed.device_mesh import init_device_mesh

ORDER = ["tok_embeddings", *(f"layers.{i}" for i in range(8)), "norm", "output"]


def _blocks(plan: list[list[str]]) -> list[int]:
    return [sum(m.startswith("layers.") for m in stage) for stage in plan]


def test_balanced_split_counts_embedding_and_output_as_layers():
    plan = plan_stages(ORDER, 2)
    assert plan[0][0] == "tok_embeddings" and plan[-1][-2:] == ["norm", "output"]
    assert _blocks(plan) == [4, 4]
    assert _blocks(plan_stages(ORDER, 4)) == [2, 2, 2, 2]  # weights 3, 2, 2, 3: none lighter exists
    assert _blocks(plan_stages(ORDER, 3)) == [2, 3, 3]  # weights 3, 3, 4 (not 3, 2, 5)
    assert _blocks(plan_stages(ORDER, 3, input_weight=0, output_weight=0)) == [2, 3, 3]
    assert _blocks(plan_stages(ORDER, 2, input_weight=0, output_weight=4)) == [6, 2]
    assert [m for s in plan_stages(ORDER, 8) for m in s] == ORDER


def test_explicit_split_points():
    points = [ORDER[:2], ORDER[2:9], ORDER[9:]]
    assert plan_stages(ORDER, 3, split_points=points) == points
    with pytest.raises(ParallelConfigError, match="split_points lists 3 stage"):
        plan_stages(ORDER, 4, split_points=points)
    with pytest.raises(ParallelConfigError, match=r"unknown module 'layer.1'.*closest: 'layers.1'"):
        plan_stages(ORDER, 2, split_points=[["tok_embeddings", "layer.1"], ORDER[2:]])
    with pytest.raises(ParallelConfigError, match="exactly once and in forward order"):
        plan_stages(ORDER, 2, split_points=[ORDER[5:], ORDER[:5]])


def test_stage_placement():
    assert [stage_ids_for_rank(r, 4, 2) for r in range(4)] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert [stage_ids_for_rank(r, 4, 2, "v") for r in range(4)] == [[0, 7], [1, 6], [2, 5], [3, 4]]
    assert stage_ids_for_rank(1, 2, 4, "v") == [1, 2, 5, 6]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(schedule="Interleaved1FB", pp_degree=2), r"unknown pipeline schedule .*closest: 'Interleaved1F1B'"),
    (dict(schedule="ZBVZeroBubble", pp_degree=2, stages_per_rank=1), r"exactly 2 stage\(s\) per rank.*use 1F1B"),
    (dict(schedule="DualPipeV", pp_degree=2, stages_per_rank=3), r"exactly 2"),
    (dict(schedule="Interleaved1F1B", pp_degree=2, stages_per_rank=1), r"at least 2"),
    (dict(schedule="GPipe", pp_degree=2, stages_per_rank=2), r"use Interleaved1F1B"),
    (dict(schedule="1F1B", pp_degree=4, num_blocks=3), r"3 repeated block\(s\) \(layers\), fewer than the 4"),
    (dict(schedule="1F1B", pp_degree=2, local_batch_size=8, microbatch_size=3), r"not divisible by the pipeline microbatch_size=3"),
    (dict(schedule="1F1B", pp_degree=4, local_batch_size=4, microbatch_size=2), r"at least as many microbatches as stages"),
    (dict(schedule="ZBVZeroBubble", pp_degree=2, stages_per_rank=2, n_microbatches=3), r"at least as many"),
    (dict(schedule="Interleaved1F1B", pp_degree=2, stages_per_rank=2, n_microbatches=5), r"multiple of 2 rounds"),
])
def test_impossible_requests(kwargs, match):
    with pytest.raises(ParallelConfigError, match=match):
        validate_pipeline(kwargs.pop("schedule"), **kwargs)


def test_possible_requests_and_microbatch_count():
    assert resolve_schedule("zbvzerobubble")[0] == "ZBVZeroBubble"
    assert validate_pipeline("1f1b", pp_degree=2, local_batch_size=8, microbatch_size=2) == 4
    assert validate_pipeline("InterleavedZeroBubble", pp_degree=2, stages_per_rank=1) == 0
    assert resolve_microbatches(n_microbatches=4, local_batch_size=8) == 4
    with pytest.raises(ParallelConfigError, match="cannot be split into n_microbatches=3"):
        resolve_microbatches(n_microbatches=3, local_batch_size=8)
    with pytest.raises(ParallelConfigError, match="give n_microbatches, or both"):
        resolve_microbatches(local_batch_size=8)


def test_split_errors_on_a_model():
    with fake_world(2):
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("pp",))
        with torch.device("meta"):
            model = ToyModel()
        order = module_order_of(model)
        with pytest.raises(ParallelConfigError, match="4 repeated block"):
            pipeline_split(model, mesh, module_order=order, schedule="Interleaved1F1B", stages_per_rank=4)
        with pytest.raises(ParallelConfigError, match=r"'layers.9', which the model does not have"):
            pipeline_split(model, mesh, module_order=[*order[:-2], "layers.9", "norm", "output"])
        parts = pipeline_split(model, mesh, module_order=order, schedule="ZBVZeroBubble")
        assert parts.stage_ids == [0, 3] and parts.is_first and parts.is_last and len(parts) == 2
        assert [m.output is None for m in parts.modules] == [True, False]
        with pytest.raises(ParallelConfigError, match="give n_microbatches"):
            build_pipeline_schedule(parts, mesh, loss_fn=torch.nn.functional.cross_entropy)
