"""Data parallelism: FSDP2 (per-parameter sharding), HSDP on a 2-D mesh, and DDP replication."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

from titan_parallel.errors import ParallelConfigError, one_of
from titan_parallel.modules import Units, resolve_units

ReshardAfterForward = bool | int | Literal["default", "always", "never"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def as_dtype(arg: str, value: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype from a torch.dtype or a name such as "bfloat16" (None stays None)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise one_of(arg, value, DTYPES)
    return DTYPES[value]


def check_dp_mesh(mesh: DeviceMesh, model: nn.Module, *, arg: str = "mesh", max_ndim: int = 2,
                  exclude: frozenset[int] = frozenset()) -> None:
    """The mesh is 1-D (or 2-D for HSDP) and disjoint from the mesh of any DTensor parameter
    (the TP mesh): both must be views of one root mesh, so that each rank holds one shard.
    exclude: ids of parameters sharded on a mesh of their own (expert-parallel weights)."""
    if not isinstance(mesh, DeviceMesh):
        raise ParallelConfigError(f"{arg} must be a torch DeviceMesh, got {type(mesh).__name__}")
    if not 1 <= mesh.ndim <= max_ndim:
        shape = "1-D (shard)" + (" or 2-D (replicate, shard)" if max_ndim == 2 else "")
        raise ParallelConfigError(
            f"{arg} must be {shape}; got a {mesh.ndim}-D mesh with dims {mesh.mesh_dim_names}: "
            "pass the data-parallel view, e.g. ParallelDims.get_mesh('dp_shard_cp')"
        )
    for name, param in model.named_parameters():
        if not isinstance(param, DTensor) or id(param) in exclude:
            continue
        other = param.device_mesh
        if other.device_type != mesh.device_type:
            raise ParallelConfigError(
                f"{arg} is a {mesh.device_type!r} mesh but parameter {name!r} is already a DTensor on "
                f"a {other.device_type!r} mesh"
            )
        common = set(mesh.mesh.flatten().tolist()) & set(other.mesh.flatten().tolist())
        if len(common) > 1:
            raise ParallelConfigError(
                f"{arg} (ranks {sorted(mesh.mesh.flatten().tolist())}) overlaps the mesh of parameter "
                f"{name!r} (ranks {sorted(other.mesh.flatten().tolist())}, dims {other.mesh_dim_names}): "
                "data-parallel and tensor-parallel meshes must be different dims of one mesh"
            )
        break  # one TP parameter is enough: they all share the TP mesh


def _reshard_values(policy: ReshardAfterForward, count: int) -> list[bool | int]:
    if isinstance(policy, bool) or (isinstance(policy, int) and policy > 1):
        return [policy] * count
    if policy == "always":
        return [True] * count
    if policy == "never":
        return [False] * count
    if policy == "default":
        # The last block's parameters are needed again as soon as backward starts: keep them.
        return [True] * (count - 1) + [False] * min(count, 1)
    raise ParallelConfigError(
        f"reshard_after_forward={policy!r} is not supported; use True, False, an int (>1: reshard to "
        "groups of that size), or 'default', 'always', 'never'"
    )


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    units: Units = None,
    param_dtype: torch.dtype | str | None = None,
    reduce_dtype: torch.dtype | str | None = None,
    reshard_after_forward: ReshardAfterForward = "default",
    cpu_offload: bool = False,
    experts: str | None = None,
    expert_mesh: DeviceMesh | None = None,
    expert_grad_divide: float | None = None,
) -> nn.Module:
    """Shard `model` with FSDP2: each unit (default: each repeated block; `[]`: none) its own
    all-gather group, then the root for whatever is left (embeddings, final norm, output).
    experts + expert_mesh: the experts modules first get their own units on the expert mesh
    (see expert_parallel.apply_expert_fsdp; expert_grad_divide defaults to this mesh's size, the
    data-parallel degree their gradients are averaged over like every other parameter's).

    mesh: 1-D -> FSDP over its ranks; 2-D (replicate, shard) -> HSDP: sharded along dim 1,
    replicated along dim 0. param_dtype/reduce_dtype: mixed precision (e.g. "bfloat16" compute,
    "float32" gradient reduction); None keeps the parameters' dtype. reshard_after_forward:
    "default" frees every unit's gathered parameters after its forward except the last unit's
    (backward needs it at once); "always"/True, "never"/False (pass this under pipeline
    parallelism, where several microbatches reuse them), or an int to keep them gathered in
    groups of that size. cpu_offload: keep sharded parameters, gradients and optimizer state on
    the CPU (initialize with device="cpu").

    Apply after TP, activation checkpointing and compile. Returns the model (modified in place).
    """
    expert_ids: frozenset[int] = frozenset()
    if experts is not None:
        from titan_parallel.expert_parallel import check_experts, expert_weights

        if expert_mesh is None:
            raise ParallelConfigError("experts given without expert_mesh: pass the expert FSDP mesh (efsdp)")
        expert_ids = frozenset(id(p) for _, m in check_experts(model, experts, 1) for _, p in expert_weights(m))
    check_dp_mesh(mesh, model, exclude=expert_ids)
    if cpu_offload and mesh.device_type == "cpu":
        raise ParallelConfigError(
            "cpu_offload=True moves GPU parameters to the CPU, but this mesh is already on the CPU; "
            "leave cpu_offload off for CPU training"
        )
    mp = MixedPrecisionPolicy(param_dtype=as_dtype("param_dtype", param_dtype),
                              reduce_dtype=as_dtype("reduce_dtype", reduce_dtype))
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    blocks = [(n, m) for n, m in resolve_units(model, units) if m is not model]
    values = _reshard_values(reshard_after_forward, len(blocks))
    if experts is not None:
        from titan_parallel.expert_parallel import apply_expert_fsdp

        apply_expert_fsdp(model, expert_mesh, experts=experts,
                          grad_divide=mesh.size() if expert_grad_divide is None else expert_grad_divide,
                          reshard_after_forward=values[0] if values else True, mp_policy=mp,
                          offload_policy=offload)
    for (_, block), value in zip(blocks, values):
        fully_shard(block, mesh=mesh, reshard_after_forward=value, mp_policy=mp, offload_policy=offload)
    # The root's parameters (embeddings, output) are needed first in backward: keep them by default.
    root_value = False if reshard_after_forward == "default" else _reshard_values(reshard_after_forward, 1)[0]
    fully_shard(model, mesh=mesh, reshard_after_forward=root_value, mp_policy=mp, offload_policy=offload)
    return model


def apply_ddp(model: nn.Module, mesh: DeviceMesh, *, bucket_cap_mb: float | None = None) -> nn.Module:
    """Replicate `model` over a 1-D mesh with torch's DDP (composable `replicate`): every rank holds
    all parameters and gradients are all-reduced in buckets during backward.

    DDP composes with activation checkpointing and compile, not with tensor parallelism: for
    replication plus TP (or plus sharding) use apply_fsdp with a 2-D (replicate, shard) mesh.
    Call after the model's weights are initialized or before its first forward: DDP broadcasts
    rank 0's parameters at the first forward.
    """
    from torch.distributed._composable.replicate import replicate

    check_dp_mesh(mesh, model, max_ndim=1)
    tp_params = [n for n, p in model.named_parameters() if isinstance(p, DTensor)]
    if tp_params:
        raise ParallelConfigError(
            f"apply_ddp does not compose with tensor parallelism (parameter {tp_params[0]!r} is a "
            "DTensor); use apply_fsdp with a 2-D (replicate, shard) mesh for replication plus TP"
        )
    kwargs = {} if bucket_cap_mb is None else {"bucket_cap_mb": bucket_cap_mb}
    replicate(model, device_mesh=mesh, **kwargs)
    return model
