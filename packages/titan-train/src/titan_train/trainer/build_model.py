"""Model on meta -> float8 -> pipeline split -> titan_parallel.parallelize per part -> init.

The plan (titan_train.plan) says what to apply; this file only fetches meshes and hands each part
to titan_parallel.parallelize, the one checked entry point (TP -> Ulysses -> AC -> compile ->
FSDP/DDP, or one GPU's casts). The memory estimator parallelizes its meta model through the same function.
"""

from __future__ import annotations

import fnmatch

import titan_parallel as tp_lib
import torch
from titan_mesh import ParallelDims
from torch import nn

from titan_train.errors import ConfigError
from titan_train.plan import RunPlan


def _module_exists(model: nn.Module, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n, _ in model.named_modules())


def tp_plan_for(spec, part: nn.Module, *, loss_parallel: bool) -> dict:
    plan = spec.tp_plan(part, sequence_parallel=True, loss_parallel=loss_parallel)
    # A pipeline stage lacks some modules (embedding, output): keep the entries it has.
    return {k: v for k, v in plan.items() if _module_exists(part, k)}


def parallelize_part(part: nn.Module, plan: RunPlan, dims: ParallelDims) -> nn.Module:
    """Tensor / context / data parallelism, activation checkpointing and compile for one part."""
    par, spec = plan.parallel, plan.spec
    tp_mesh = dims.get_mesh("tp") if par.tp else None
    dp_mesh = None
    if par.dp == "fsdp":
        dp_mesh = dims.fsdp_mesh() if dims.world_size > 1 else dims.get_mesh("world")
    elif par.dp == "ddp":
        dp_mesh = dims.get_mesh("dp_replicate")
    experts = {}
    # experts: their own FSDP units (and EP), grads averaged like the rest; under plain DDP
    # (replicas only) they are ordinary parameters
    if plan.moe and dims.has_mesh and par.cast_dtype is None and not (par.dp == "ddp" and dims.ep == 1 and not par.tp):
        experts = dict(experts=spec.experts, expert_dp_mesh=dims.expert_fsdp_mesh(),
                       ep_mesh=dims.get_mesh("ep") if dims.ep > 1 else None)
    tp_lib.parallelize(
        part, units=spec.blocks,
        tp_mesh=tp_mesh, tp_plan=tp_plan_for(spec, part, loss_parallel=par.loss_parallel) if tp_mesh else None,
        async_tp=par.async_tp, ulysses_mesh=dims.get_mesh("cp") if par.ulysses else None,
        attention_modules=spec.attention_cores, ac=par.ac, compile=par.compile or False,
        dp_mesh=dp_mesh, dp=par.dp or "fsdp", fsdp=par.fsdp if par.dp == "fsdp" or par.cast_dtype else None,
        mixed_precision=par.cast_dtype, persistent_casts=par.persistent_casts, **experts)
    return part


def apply_converters(model: nn.Module, plan: RunPlan) -> None:
    """Float8 on the whole (meta) model, before any pipeline split: every stage converts alike."""
    f8 = plan.float8
    if f8 is None:
        return
    if not f8.emulate and not torch.cuda.is_available():  # the library's message names its argument, not our key
        raise ConfigError("model.converters includes quantize.linear.float8, which needs a float8-capable CUDA "
                          "GPU (e.g. H100) and none is visible; add --quantize.linear.float8.emulate to test "
                          "the conversion on CPU (slow, for checks only)")
    tp_lib.apply_float8(model, recipe=f8.recipe, skip=f8.skip, skip_small=f8.skip_small,
                        fsdp_float8_all_gather=f8.fsdp_float8_all_gather, precompute_scale=f8.precompute_scale,
                        emulate=f8.emulate)
