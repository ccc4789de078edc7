"""Pipeline and context parallel, from the run's plan to titan-parallel's functions."""

from __future__ import annotations

from collections.abc import Callable

import torch
from titan_mesh import ParallelDims
from titan_parallel import context as cp_lib
from titan_parallel import pipeline as pp_lib
from torch import nn

from titan_train.errors import ConfigError
from titan_train.plan import RunPlan


def stage_names(plan: RunPlan, order: list[str]) -> list[list[str]] | None:
    """Module names per stage the config asks for (explicit, torchtitan's split points, or so many
    layers per stage), or None: titan-parallel balances the stages."""
    pp = plan.pipeline
    if pp.module_fqns is not None:
        return pp.module_fqns
    if pp.split_points:
        return _from_split_points(order, pp.split_points)
    if pp.layers_per_stage is not None:
        return layers_per_stage_split(order, pp.layers_per_stage, plan.dims.pp)
    return None


def split(plan: RunPlan, dims: ParallelDims, model: nn.Module):
    """This rank's stages of the meta model: (PipelineParts, list of stage modules)."""
    order = pp_lib.module_order_of(model, plan.spec.blocks)
    parts = pp_lib.pipeline_split(model, dims.get_mesh("pp"), module_order=order, schedule=plan.pipeline.schedule,
                                  split_points=stage_names(plan, order))
    check_cuts(parts.plan, plan.spec.pipeline_split_points(plan.args))
    return parts, list(parts.modules)


def check_cuts(stages: list[list[str]], allowed: list[str] | None) -> None:
    """Every stage after the first must begin at a block the model family allows a cut before
    (ModelSpec.pipeline_split_points); None: the family does not restrict them."""
    if allowed is None:
        return
    bad = [s[0] for s in stages[1:] if s[0] not in set(allowed)]
    if bad:
        raise ConfigError(f"pipeline stages would begin at {bad}, where this model cannot be cut; stages may begin "
                          f"at {allowed[0]} .. {allowed[-1]} ({len(allowed)} places): change "
                          "parallelism.pipeline_parallel_split_points / module_fqns_per_model_part / layers_per_stage")


def layers_per_stage_split(order: list[str], per: int, pp: int) -> list[list[str]]:
    """Stages of `per` blocks each (the last may hold fewer), the embedding with the first and the
    final norm / output with the last; their number must be a multiple of the pp degree."""
    if per < 1:
        raise ConfigError(f"parallelism.pipeline_parallel_layers_per_stage = {per} must be >= 1")
    blocks = [m for m in order if pp_lib.split.is_block(m)]
    first = blocks[0] if blocks else None
    head = order[:order.index(first)] if first else []
    tail = order[order.index(blocks[-1]) + 1:] if blocks else []
    stages = [blocks[i:i + per] for i in range(0, len(blocks), per)]
    if len(stages) % pp:
        raise ConfigError(f"parallelism.pipeline_parallel_layers_per_stage = {per} cuts {len(blocks)} layers into "
                          f"{len(stages)} stages, which the pipeline degree {pp} does not divide; choose a value "
                          f"giving a multiple of {pp} stages (e.g. {max(1, len(blocks) // pp)})")
    stages[0] = head + stages[0]
    stages[-1] = stages[-1] + tail
    return stages


def _from_split_points(order: list[str], points: list[str]) -> list[list[str]]:
    """torchtitan's split points ("layers.4" starts a new stage) -> module names per stage."""
    stages, current = [], []
    cuts = set(points)
    for name in order:
        if name in cuts and current:
            stages.append(current)
            current = []
        current.append(name)
    stages.append(current)
    missing = cuts - set(order)
    if missing:
        raise ConfigError(f"parallelism.pipeline_parallel_split_points: {sorted(missing)} are not modules of "
                          f"the model (e.g. {order[1]}, {order[len(order) // 2]})")
    return stages


class Pipeline:
    """Runs the schedule on one micro-batch group; returns the loss share held by this rank."""

    def __init__(self, plan: RunPlan, dims: ParallelDims, parts, modules: list[nn.Module],
                 loss_fn: Callable, device: torch.device) -> None:
        parts.modules = modules
        self.device = device
        accum = plan.batch.accum_steps

        def loss(out, target):
            # the schedule divides by the microbatch count; accumulation divides by its steps
            return loss_fn(out, target) / accum

        self.pipe = pp_lib.build_pipeline_schedule(
            parts, dims.get_mesh("pp"), loss_fn=loss, microbatch_size=plan.batch.microbatch,
            local_batch_size=plan.batch.local_batch, device=device)

    def step(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = pp_lib.pipeline_step(self.pipe, inputs, labels)
        return loss if loss is not None else torch.zeros((), device=self.device)


def cp_context(plan: RunPlan, dims: ParallelDims, parts: list[nn.Module], batch: list[torch.Tensor]):
    """Shard inputs, labels and the model's sequence buffers (RoPE tables) for this step."""
    extra = [(t, d) for m in parts for t, d in plan.spec.cp_buffers(m)]
    buffers = list(batch) + [t for t, _ in extra]
    seq_dims = [1] * len(batch) + [d for _, d in extra]
    return cp_lib.context_parallel_ctx(dims.get_mesh("cp"), buffers=buffers, seq_dims=seq_dims,
                                       no_restore_buffers=list(batch), method=plan.context.method,
                                       rotate=plan.context.rotate)
