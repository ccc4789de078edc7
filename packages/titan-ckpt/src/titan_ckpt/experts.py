"""Stacked expert weights <-> one tensor per expert, from each rank's own shards.

A mixture of experts keeps a layer's experts in 3-D weights (`...experts.w1` [E, H, D]), sharded
by expert parallel on dim 0 and by FSDP on dim 0 or 1. HF checkpoints hold one 2-D tensor per
expert. For HF reads and writes each rank describes only the experts it holds: expert j's piece
becomes `...experts.w1.j`, a DTensor over the mesh dims that still shard or replicate it (FSDP's
dim 1 becomes the piece's dim 0), or a plain tensor when the rank holds all of it. DCP then reads
or writes exactly those slices, so no rank materializes every expert.

An adapter declares its stacked weights in `expert_weights` (suffixes such as "moe.experts.w1"),
and accepts / returns (from_hf(..., stacked=False)) the per-expert entries.

HF checkpoints that keep experts fused (Llama 4, GPT-OSS: one [E, D, 2F] gate/up tensor per layer)
cannot be cut per expert that way: the adapter transposes and concatenates whole stacked tensors.
Their adapters list the weights in `fused_expert_weights`; those are gathered over every mesh dim
but the expert dim (`gather_expert_dims`), so a rank holds its experts whole (E/ep of them, never
all under expert parallel) and DTensor ops on the other dims stay local.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard

from .errors import CheckpointError


def _is_stacked(key: str, value: Any, suffixes: tuple[str, ...]) -> bool:
    return any(key == s or key.endswith("." + s) for s in suffixes) and getattr(value, "dim", lambda: 0)() == 3


def split_experts(sd: dict[str, Any], suffixes: tuple[str, ...]) -> dict[str, Any]:
    """Each stacked weight replaced by `{key}.{j}` entries for the experts this rank holds."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if suffixes and _is_stacked(key, value, suffixes):
            for j, piece in local_experts(key, value):
                out[f"{key}.{j}"] = piece
        else:
            out[key] = value
    return out


def local_experts(key: str, t: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(expert index, this rank's piece of it) for the experts of `t` this rank holds."""
    if not isinstance(t, DTensor):
        return list(enumerate(t.unbind(0)))
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh, placements = t.device_mesh, t.placements
    names = mesh.mesh_dim_names
    keep, sub = [], []
    for dim, p in enumerate(placements):
        if type(p) is Shard and p.dim == 0:
            continue  # experts split over this dim: each piece lives on one coordinate of it
        if type(p) is Shard:
            keep.append(dim)
            sub.append(Shard(p.dim - 1))
        elif p.is_replicate():
            keep.append(dim)
            sub.append(Replicate())
        else:
            raise CheckpointError(f"{key}: expert weights placed as {placements} cannot be split per expert "
                                  "(expected Shard(0) over experts, Shard(1)/Shard(2) or Replicate otherwise)")
    if keep and names is None:
        raise CheckpointError(f"{key}: its mesh has no dim names, so the per-expert mesh cannot be sliced")
    _, offset = compute_local_shape_and_global_offset(t.shape, mesh, placements)
    local = t.to_local()
    piece_shape = tuple(t.shape[1:])
    stride = torch.empty(piece_shape, device="meta").stride()
    submesh = mesh[tuple(names[d] for d in keep)] if keep else None
    out = []
    for i in range(local.shape[0]):
        piece = local[i]
        if submesh is not None:
            piece = DTensor.from_local(piece, submesh, sub, run_check=False, shape=piece_shape, stride=stride)
        out.append((offset[0] + i, piece))
    return out


def merge_experts(pieces: dict[str, Any], model_sd: dict[str, Any], suffixes: tuple[str, ...]) -> dict[str, Any]:
    """The inverse for loading: `{key}.{j}` pieces (as split_experts laid them out) stacked back
    into tensors shaped and placed like the model's own `key`."""
    out = dict(pieces)
    for key, target in model_sd.items():
        if not (suffixes and _is_stacked(key, target, suffixes)):
            continue
        mine = [j for j, _ in local_experts(key, target)]
        missing = [f"{key}.{j}" for j in mine if f"{key}.{j}" not in out]
        if missing:
            raise CheckpointError(f"expert pieces missing after loading: {missing[:4]}")
        parts = [out.pop(f"{key}.{j}") for j in mine]
        local = torch.stack([p.to_local() if isinstance(p, DTensor) else p for p in parts])
        if isinstance(target, DTensor):
            out[key] = DTensor.from_local(local, target.device_mesh, target.placements, run_check=False,
                                          shape=target.shape, stride=target.stride())
        else:
            out[key] = local
    return out


def gather_expert_dims(sd: dict[str, Any], suffixes: tuple[str, ...]) -> dict[str, Any]:
    """Stacked expert DTensors redistributed to Shard(0) where they shard experts and Replicate
    elsewhere (an all-gather over FSDP's dims); everything else unchanged."""
    out = dict(sd)
    for key, value in sd.items():
        if suffixes and _is_stacked(key, value, suffixes) and isinstance(value, DTensor):
            placements = [p if (type(p) is Shard and p.dim == 0) else Replicate() for p in value.placements]
            if any(type(p) is not Shard and not p.is_replicate() for p in value.placements):
                raise CheckpointError(f"{key}: expert weights placed as {value.placements} cannot be gathered")
            out[key] = value.redistribute(value.device_mesh, placements)
    return out


def hf_view(sd: dict[str, Any], adapter: Any) -> dict[str, Any]:
    """The model state dict as `adapter.to_hf` takes it: per-expert pieces for `expert_weights`,
    expert-dim-only shards for `fused_expert_weights` (neither: unchanged)."""
    sd = split_experts(sd, expert_suffixes(adapter))
    return gather_expert_dims(sd, tuple(getattr(adapter, "fused_expert_weights", ()) or ()))


def expert_suffixes(adapter: Any) -> tuple[str, ...]:
    return tuple(getattr(adapter, "expert_weights", ()) or ())
