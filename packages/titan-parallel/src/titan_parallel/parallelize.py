"""All appliers in the one order that composes, after checking every request up front.

Order: float8 conversion -> tensor parallel -> expert parallel -> Ulysses context parallel ->
activation checkpointing -> compile -> FSDP/DDP (or, in one process, mixed precision casts).
Float8 swaps Linear modules, so TP must shard the swapped ones; TP and EP hooks must sit inside the
checkpointed region so recompute replays them; compile wraps the checkpointed block whole (leaving
experts eager: their routing sizes are data); FSDP goes last so its hooks wrap everything and run
outside the compiled graphs, the experts first on their own mesh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ParallelStyle

from titan_parallel.activation_checkpoint import OpPolicy, apply_ac, check_ac
from titan_parallel.compile import apply_compile
from titan_parallel.data_parallel import (
    ReshardAfterForward,
    apply_ddp,
    apply_fsdp,
    as_dtype,
    check_dp_mesh,
)
from titan_parallel.errors import ParallelConfigError, one_of
from titan_parallel.expert_parallel import apply_ep, apply_expert_fsdp, check_experts, has_experts
from titan_parallel.float8 import apply_float8, check_float8
from titan_parallel.mixed_precision import apply_mixed_precision, check_mixed_precision
from titan_parallel.modules import Units, match_modules, resolve_units
from titan_parallel.tensor_parallel import apply_tp, check_tp_sizes, resolve_plan


@dataclass
class Float8Options:
    """apply_float8's options (see there)."""

    recipe: str = "tensorwise"
    skip: Sequence[str] = ()
    skip_small: bool = True
    fsdp_float8_all_gather: bool = False
    precompute_scale: bool = False
    emulate: bool = False


@dataclass
class ACOptions:
    """apply_ac's options (see there)."""

    mode: Literal["none", "full", "selective"] = "full"
    layer_freq: int | str | None = None
    op_policy: OpPolicy | Any = None


@dataclass
class FSDPOptions:
    """apply_fsdp's options (see there)."""

    param_dtype: Any = None
    reduce_dtype: Any = None
    reshard_after_forward: ReshardAfterForward = "default"
    cpu_offload: bool = False


@dataclass
class CompileOptions:
    """apply_compile's options (see there)."""

    fullgraph: bool = True
    backend: str = "inductor"
    kwargs: dict = field(default_factory=dict)
    memory_budget: float | None = None  # activation memory budget of each compiled unit (see apply_compile)


def parallelize(
    model: nn.Module,
    *,
    units: Units = None,
    float8: Float8Options | None = None,
    tp_mesh: DeviceMesh | None = None,
    tp_plan: Mapping[str, ParallelStyle] | None = None,
    async_tp: bool = False,
    float8_collectives: bool | None = None,
    ulysses_mesh: DeviceMesh | None = None,
    attention_modules: str = "layers.*.attention.sdpa",
    ep_mesh: DeviceMesh | None = None,
    experts: str = "layers.*.moe.experts",
    expert_dp_mesh: DeviceMesh | None = None,
    expert_grad_divide: float | None = None,
    ac: ACOptions | None = None,
    compile: CompileOptions | bool = False,
    dp_mesh: DeviceMesh | None = None,
    dp: Literal["fsdp", "ddp"] = "fsdp",
    fsdp: FSDPOptions | None = None,
    mixed_precision: torch.dtype | str | None = None,
    persistent_casts: bool = False,
) -> nn.Module:
    """Apply what is asked, in the documented order, to a model (usually on the meta device).

    units: the repeated blocks (FSDP units, AC and compile targets); None finds them. float8:
    convert linears first. tp_mesh + tp_plan: tensor parallel (async_tp needs compile and CUDA;
    float8_collectives: float8 all-gathers for tensorwise float8 linears, see apply_tp).
    ulysses_mesh: Ulysses context parallel over this 1-D mesh for the attention cores matching
    `attention_modules` (apply_ulysses; shard the batch with context_parallel_ctx at each step).
    ep_mesh: expert parallel over this 1-D mesh for the experts modules matching `experts`
    (apply_ep). expert_dp_mesh: FSDP of those experts (efsdp, or (dp_replicate, efsdp) with HSDP;
    ParallelDims.expert_fsdp_mesh()); needed with EP, and with TP (each TP rank runs the experts on
    its own tokens, so their gradients are summed over TP ranks there). expert_grad_divide: what
    their gradients are divided by (default: the size of dp_mesh, as for dense parameters).
    ac / compile: per unit (experts stay eager). dp_mesh: "fsdp" (1-D FSDP or 2-D HSDP, options in
    `fsdp`) or "ddp" (1-D, no TP, no EP). mixed_precision: one process without any mesh, float32
    parameters with this compute dtype (apply_mixed_precision: FSDP2's casts on one rank without
    its buffer copies; fsdp.reshard_after_forward=False keeps the casts for backward;
    persistent_casts=True keeps them between steps for MasterAdamW). Every request is checked before the model is touched:
    unknown names, indivisible TP or EP sizes, mismatched meshes, missing torchao all raise
    ParallelConfigError.
    Returns the model; then initialize it (init_weights) and build the optimizer.
    """
    compile_opts = CompileOptions() if compile is True else (compile or None)
    # --- checks, before anything changes ---
    resolve_units(model, units)
    if float8 is not None:
        check_float8(model, recipe=float8.recipe, skip=float8.skip, emulate=float8.emulate,
                     fsdp_float8_all_gather=float8.fsdp_float8_all_gather,
                     precompute_scale=float8.precompute_scale)
        if float8.fsdp_float8_all_gather and (dp_mesh is None or dp != "fsdp"):
            raise ParallelConfigError("float8 fsdp_float8_all_gather=True needs FSDP (dp_mesh with dp='fsdp')")
    if (tp_mesh is None) != (tp_plan is None):
        raise ParallelConfigError("tensor parallel needs both tp_mesh and tp_plan (or neither)")
    if tp_mesh is not None:
        if not isinstance(tp_mesh, DeviceMesh) or tp_mesh.ndim != 1:
            raise ParallelConfigError(f"tp_mesh must be a 1-D DeviceMesh, got {tp_mesh!r}")
        check_tp_sizes(model, resolve_plan(model, tp_plan), tp_mesh.size())
        if dp_mesh is not None:
            _check_disjoint(dp_mesh, tp_mesh)
    if async_tp:
        if tp_mesh is None or compile_opts is None:
            raise ParallelConfigError("async_tp=True needs tensor parallel (tp_mesh, tp_plan) and compile")
        if tp_mesh.device_type != "cuda":
            raise ParallelConfigError(f"async_tp=True needs CUDA GPUs; the TP mesh is on {tp_mesh.device_type!r}")
    if ulysses_mesh is not None:
        match_modules(model, attention_modules, arg="attention_modules")  # the cores exist
    moe = has_experts(model, experts)
    _check_experts(model, moe=moe, experts=experts, ep_mesh=ep_mesh, expert_dp_mesh=expert_dp_mesh,
                   tp_mesh=tp_mesh, dp=dp)
    if ac is not None:
        check_ac(mode=ac.mode, layer_freq=ac.layer_freq, op_policy=ac.op_policy)
    if dp not in ("fsdp", "ddp"):
        raise one_of("dp", dp, ("fsdp", "ddp"))
    if dp == "ddp" and fsdp is not None and fsdp != FSDPOptions():
        raise ParallelConfigError(
            f"fsdp={fsdp} has no effect with dp='ddp' (DDP keeps parameters and gradients as they are; for "
            "bf16 compute wrap forward and loss in torch.autocast): drop it, or use dp='fsdp'"
        )
    fsdp = fsdp or FSDPOptions()
    if dp_mesh is not None:
        check_dp_mesh(dp_mesh, model, arg="dp_mesh", max_ndim=2 if dp == "fsdp" else 1)
        if dp == "ddp" and tp_mesh is not None:
            raise ParallelConfigError(
                "dp='ddp' does not compose with tensor parallel; use dp='fsdp' with a 2-D (replicate, "
                "shard) dp_mesh"
            )
        as_dtype("param_dtype", fsdp.param_dtype)
        as_dtype("reduce_dtype", fsdp.reduce_dtype)
    if mixed_precision is not None:
        meshes = [n for n, m in (("dp_mesh", dp_mesh), ("tp_mesh", tp_mesh), ("ep_mesh", ep_mesh),
                                 ("expert_dp_mesh", expert_dp_mesh), ("ulysses_mesh", ulysses_mesh)) if m is not None]
        if meshes:
            raise ParallelConfigError(
                f"mixed_precision is for one process without meshes, but {', '.join(meshes)} given: use "
                "fsdp=FSDPOptions(param_dtype=..., reduce_dtype=...) with a dp_mesh instead")
        check_mixed_precision(model, mixed_precision)
    elif persistent_casts:
        raise ParallelConfigError("persistent_casts=True keeps the copies of mixed_precision's casts, but "
                                  "mixed_precision is None: give it a dtype such as 'bfloat16'")

    # --- the documented order ---
    if float8 is not None:
        apply_float8(model, recipe=float8.recipe, skip=float8.skip, skip_small=float8.skip_small,
                     fsdp_float8_all_gather=float8.fsdp_float8_all_gather,
                     precompute_scale=float8.precompute_scale, emulate=float8.emulate)
    if tp_mesh is not None:
        apply_tp(model, tp_mesh, tp_plan, async_tp=async_tp, float8_collectives=float8_collectives)
    if ep_mesh is not None:
        apply_ep(model, ep_mesh, experts=experts)
    if ulysses_mesh is not None:
        from titan_parallel.context import apply_ulysses

        apply_ulysses(model, ulysses_mesh, attention_modules=attention_modules)
    if ac is not None:
        apply_ac(model, mode=ac.mode, layer_freq=ac.layer_freq, op_policy=ac.op_policy, units=units)
    if compile_opts is not None:
        apply_compile(model, units=units, fullgraph=compile_opts.fullgraph,
                      backend=compile_opts.backend, eager=experts if moe else None,
                      memory_budget=compile_opts.memory_budget, **compile_opts.kwargs)
    with_experts = dict(experts=experts, expert_mesh=expert_dp_mesh,
                        expert_grad_divide=expert_grad_divide) if expert_dp_mesh is not None else {}
    if dp_mesh is not None:
        if dp == "fsdp":
            apply_fsdp(model, dp_mesh, units=units, param_dtype=fsdp.param_dtype,
                       reduce_dtype=fsdp.reduce_dtype, reshard_after_forward=fsdp.reshard_after_forward,
                       cpu_offload=fsdp.cpu_offload, **with_experts)
        else:
            apply_ddp(model, dp_mesh)
    elif mixed_precision is not None:
        # fsdp.reshard_after_forward=False keeps the casts for backward, as FSDP keeps its gathered copies
        keep = fsdp.reshard_after_forward is False
        apply_mixed_precision(model, param_dtype=mixed_precision, units=units, keep_for_backward=keep,
                              persistent=persistent_casts)
    elif expert_dp_mesh is not None:  # TP / EP without data parallel: only the experts are sharded
        from torch.distributed.fsdp import MixedPrecisionPolicy

        apply_expert_fsdp(model, expert_dp_mesh, experts=experts,
                          grad_divide=1 if expert_grad_divide is None else expert_grad_divide,
                          mp_policy=MixedPrecisionPolicy(param_dtype=as_dtype("param_dtype", fsdp.param_dtype),
                                                         reduce_dtype=as_dtype("reduce_dtype", fsdp.reduce_dtype)))
    return model


def _check_experts(model: nn.Module, *, moe: bool, experts: str, ep_mesh, expert_dp_mesh, tp_mesh, dp: str) -> None:
    if ep_mesh is None and expert_dp_mesh is None and not (moe and tp_mesh is not None):
        return
    if not moe:
        raise ParallelConfigError(f"ep_mesh / expert_dp_mesh given, but experts={experts!r} matches no module of "
                                  f"{type(model).__name__}")
    if ep_mesh is not None:
        if not isinstance(ep_mesh, DeviceMesh) or ep_mesh.ndim != 1:
            raise ParallelConfigError(f"ep_mesh must be a 1-D DeviceMesh (ParallelDims.get_mesh('ep')), got {ep_mesh!r}")
        check_experts(model, experts, ep_mesh.size())
    if dp == "ddp":
        raise ParallelConfigError("dp='ddp' does not shard experts: mixture-of-experts models under expert or "
                                  "tensor parallel need dp='fsdp' (experts on expert_dp_mesh)")
    if expert_dp_mesh is None:
        why = "expert parallel" if ep_mesh is not None else "tensor parallel (each TP rank runs the experts on its tokens)"
        raise ParallelConfigError(f"{why} needs expert_dp_mesh, the mesh FSDP shards the experts over and sums "
                                  "their gradients on (ParallelDims.expert_fsdp_mesh())")


def _check_disjoint(dp_mesh: DeviceMesh, tp_mesh: DeviceMesh) -> None:
    common = set(dp_mesh.mesh.flatten().tolist()) & set(tp_mesh.mesh.flatten().tolist())
    if len(common) > 1:
        raise ParallelConfigError(
            f"dp_mesh (ranks {sorted(dp_mesh.mesh.flatten().tolist())}) and tp_mesh (ranks "
            f"{sorted(tp_mesh.mesh.flatten().tolist())}) overlap: they must be different dims of one mesh"
        )
