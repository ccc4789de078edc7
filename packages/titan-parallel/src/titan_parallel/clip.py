"""Gradient clipping by total norm when gradients are DTensors on several meshes.

torch's own clip_grad_norm_ needs every DTensor gradient on one mesh. A model with FSDP-only
parameters (norms, embeddings under FSDP) next to FSDP x TP parameters has two; pipeline stages
hold disjoint parameters on top of that. Here each group of gradients with one (mesh, placements)
contributes sum(|g|^p) of its local shards, reduced over the mesh dims it is sharded on (never
over dims it is replicated on, which would count it twice); groups then add up, then stages.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate


def reduce_partial(grad: torch.Tensor) -> torch.Tensor:
    """A DTensor with Partial placements (pending sums, e.g. the gradient of a sequence-parallel
    norm weight) redistributed to Replicate on those dims; anything else unchanged."""
    if isinstance(grad, DTensor) and any(p.is_partial() for p in grad.placements):
        placements = [Replicate() if p.is_partial() else p for p in grad.placements]
        return grad.redistribute(grad.device_mesh, placements)
    return grad


def _local_power_sum(grads: list[torch.Tensor], norm_type: float, foreach: bool | None) -> torch.Tensor:
    """sum(|g|^p) over local tensors (max(|g|) for p=inf), in float32, as a 0-d tensor."""
    by_device: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
    for g in grads:
        by_device[(g.device, g.dtype)].append(g)
    parts = []
    for (device, dtype), group in by_device.items():
        # bf16 / fp16 gradients: each tensor's norm in float32 too (a bf16 norm is 3 digits)
        wide = torch.float32 if dtype in (torch.bfloat16, torch.float16) else None
        if foreach is not False and device.type != "meta":
            norms = torch._foreach_norm(group, norm_type, dtype=wide)
        else:
            norms = [torch.linalg.vector_norm(g, norm_type, dtype=wide) for g in group]
        stacked = torch.stack([n.float() for n in norms])
        parts.append(stacked.max() if math.isinf(norm_type) else stacked.pow(norm_type).sum())
    return _combine(parts, norm_type)


def _combine(parts: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    if not parts:
        return torch.zeros((), dtype=torch.float32)
    device = parts[0].device
    stacked = torch.stack([p.to(device) for p in parts])
    return stacked.max() if math.isinf(norm_type) else stacked.sum()


def _reduce(value: torch.Tensor, norm_type: float, group: dist.ProcessGroup) -> torch.Tensor:
    op = dist.ReduceOp.MAX if math.isinf(norm_type) else dist.ReduceOp.SUM
    value = value.reshape(1).clone()
    dist.all_reduce(value, op=op, group=group)
    return value.reshape(())


@torch.no_grad()
def get_total_norm(
    grads: Iterable[torch.Tensor],
    norm_type: float = 2.0,
    *,
    foreach: bool | None = None,
    pp_mesh: DeviceMesh | None = None,
) -> torch.Tensor:
    """The p-norm of all `grads` together, as a plain tensor equal on every rank."""
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    meshes: dict[tuple, DTensor | None] = {}
    for g in grads:
        if isinstance(g, DTensor):
            g = reduce_partial(g)
            key = (id(g.device_mesh), tuple(g.placements))
            meshes.setdefault(key, g)
            groups[key].append(g.to_local())
        else:
            groups[("plain",)].append(g)
            meshes.setdefault(("plain",), None)
    totals = []
    for key, local in groups.items():
        value = _local_power_sum(local, norm_type, foreach)
        sample = meshes[key]
        if sample is not None:
            for dim, placement in enumerate(sample.placements):
                # Any sharding (Shard, FSDP x TP's _StridedShard): sum the pieces over this dim.
                if not (placement.is_replicate() or placement.is_partial()):
                    value = _reduce(value, norm_type, sample.device_mesh.get_group(dim))
        totals.append(value)
    total = _combine(totals, norm_type)
    if pp_mesh is not None and pp_mesh.size() > 1:
        total = _reduce(total.to(_mesh_device(pp_mesh)), norm_type, pp_mesh.get_group())
    return total if math.isinf(norm_type) else total.pow(1.0 / norm_type)


def _mesh_device(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


@torch.no_grad()
def clip_grad_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    *,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    pp_mesh: DeviceMesh | None = None,
) -> torch.Tensor:
    """Scale all gradients so their total `norm_type`-norm is at most `max_norm`; return the
    total norm before clipping (a plain 0-d float32 tensor, the same on every rank).

    Correct for any mix of plain tensors and DTensors on different meshes (FSDP-only next to
    FSDP x TP). Partial gradients (pending sums, e.g. of sequence-parallel norm weights) are
    reduced in place first, as the optimizer step would do anyway. pp_mesh: the pipeline mesh; the norm then covers the parameters of every stage
    (each stage passes only its own parameters). max_norm <= 0 or inf only measures.
    """
    norm_type = float(norm_type)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    for p in params:  # the optimizer would reduce them anyway; do it once, here
        p.grad = reduce_partial(p.grad)
    grads = [p.grad for p in params]
    total = get_total_norm(grads, norm_type, foreach=foreach, pp_mesh=pp_mesh)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite ({total.item()}); "
            "set error_if_nonfinite=False to clip anyway"
        )
    if max_norm > 0 and not math.isinf(max_norm):
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
        for g in grads:
            local = g.to_local() if isinstance(g, DTensor) else g
            by_device[local.device].append(local)
        for device, group in by_device.items():
            if foreach is not False:
                torch._foreach_mul_(group, coef.to(device))
            else:
                for t in group:
                    t.mul_(coef.to(device))
    return total
