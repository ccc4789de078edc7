"""Small reductions of a scalar over a mesh, for metrics (loss, grad norm, memory)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def _mesh_device(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


def dist_reduce_tensor(value: float | torch.Tensor, op: str, mesh: DeviceMesh | None) -> torch.Tensor:
    """Like dist_reduce, but returns the reduced scalar as a 0-dim tensor without reading it.

    On GPUs the all-reduce is only queued: a training loop can read the value a step later,
    when the GPU has long finished it, instead of waiting for the whole queue now.
    """
    if op not in (*_OPS, "mean"):
        raise ValueError(f"unknown reduction {op!r}; use one of sum, max, min, mean")
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), dtype=torch.float64)
    value = value.detach()
    if hasattr(value, "full_tensor"):  # a DTensor scalar (e.g. a loss-parallel loss)
        value = value.full_tensor()
    if mesh is None or mesh.size() == 1:
        return value.reshape(())
    t = value.to(_mesh_device(mesh), torch.float64 if mesh.device_type == "cpu" else torch.float32)
    t = t.reshape(1).clone()
    reduce_op = _OPS["sum" if op == "mean" else op]
    for dim in range(mesh.ndim):
        dist.all_reduce(t, op=reduce_op, group=mesh.get_group(dim))
    if op == "mean":
        t /= mesh.size()
    return t.reshape(())


def dist_reduce(value: float | torch.Tensor, op: str, mesh: DeviceMesh | None) -> float:
    """Reduce a scalar over every rank of `mesh` ("sum", "max", "min" or "mean").

    With mesh=None (single process) the value is returned as a float. An N-D mesh is reduced
    one dim at a time, which composes for sum, max and min.
    """
    return float(dist_reduce_tensor(value, op, mesh))


def dist_sum(value: float | torch.Tensor, mesh: DeviceMesh | None) -> float:
    return dist_reduce(value, "sum", mesh)


def dist_max(value: float | torch.Tensor, mesh: DeviceMesh | None) -> float:
    return dist_reduce(value, "max", mesh)


def dist_mean(value: float | torch.Tensor, mesh: DeviceMesh | None) -> float:
    return dist_reduce(value, "mean", mesh)
