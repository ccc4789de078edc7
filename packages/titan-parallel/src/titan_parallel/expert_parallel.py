"""Expert parallel: each rank of an `ep` mesh holds n_experts / ep of a MoE layer's experts, and
tokens travel to the rank holding their expert and back by all-to-all.

An experts module is anything with `n_experts`, weights with experts on dim 0 (3-D, e.g. w1, w2,
w3, and 2-D per-expert biases) and `compute(x, counts, *weights)`, whose forward(x, counts) takes rows of x sorted by expert
with counts[e] rows for expert e (titan_models.common.moe.GroupedExperts is one). apply_ep turns
its weights into DTensors sharded on dim 0 and replaces its forward by:

    counts [E] --all_to_all--> rows each source sends to my experts [ep, E/ep]  (one host sync)
    x sorted by expert --all_to_all--> rows for my experts, source-major -> sorted by my expert
    compute on the local experts -> back to source order --all_to_all--> the caller's row order

Everything a call needs lives in that call (no state on the module), so pipeline micro-batches and
activation-checkpoint recomputation can interleave freely; torch's functional all-to-all carries
the gradients back along the same route.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from titan_parallel.errors import ParallelConfigError
from titan_parallel.modules import match_modules, named_modules_clean, pattern_matches


def expert_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The module's own parameters with experts on dim 0 (3-D weights, 2-D biases), in
    registration order."""
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]


def check_experts(model: nn.Module, experts: str, ep: int) -> list[tuple[str, nn.Module]]:
    """The experts modules `experts` matches, each checked: n_experts, compute(), 3-D weights
    with n_experts on dim 0, and ep dividing n_experts."""
    found = match_modules(model, experts, arg="experts")
    for name, module in found:
        n = getattr(module, "n_experts", None)
        if not isinstance(n, int) or not callable(getattr(module, "compute", None)):
            raise ParallelConfigError(
                f"experts: {name!r} ({type(module).__name__}) is not an experts module: it needs an int "
                "n_experts and compute(x, counts, *weights) (see titan_parallel.expert_parallel)")
        weights = expert_weights(module)
        if not weights or any(p.shape[0] != n for _, p in weights):
            raise ParallelConfigError(
                f"experts: {name!r} needs 3-D weights with n_experts={n} on dim 0; it has "
                f"{[(k, tuple(p.shape)) for k, p in module.named_parameters(recurse=False)]}")
        if n % ep:
            allowed = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
            raise ParallelConfigError(
                f"expert parallel degree {ep} does not divide {name}.n_experts={n}: each rank must hold "
                f"a whole share of the experts; degrees that divide {n}: {allowed}")
    return found


def apply_ep(model: nn.Module, mesh: DeviceMesh, *, experts: str = "layers.*.moe.experts") -> nn.Module:
    """Shard every experts module matching `experts` over the 1-D `mesh` (Shard(0): n_experts/ep
    experts per rank) and route its tokens by all-to-all. Apply after tensor parallel and before
    activation checkpointing, compile and FSDP (parallelize does it in that order); on a meta model
    before init_weights. Returns the model."""
    if not isinstance(mesh, DeviceMesh) or mesh.ndim != 1:
        raise ParallelConfigError(f"ep mesh must be a 1-D DeviceMesh (e.g. ParallelDims.get_mesh('ep')), got {mesh!r}")
    for _, module in check_experts(model, experts, mesh.size()):
        for pname, param in expert_weights(module):
            sharded = distribute_tensor(param.data, mesh, [Shard(0)])
            module.register_parameter(pname, nn.Parameter(sharded, requires_grad=param.requires_grad))
        module.forward = functools.partial(_ep_forward, module, mesh)
    return model


def local_weights(module: nn.Module) -> list[torch.Tensor]:
    """The module's expert weights as plain tensors of this rank's experts."""
    return [p.to_local() if isinstance(p, DTensor) else p for _, p in expert_weights(module)]


def _ep_forward(module: nn.Module, mesh: DeviceMesh, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    group = mesh.get_group()
    ep = mesh.size()
    local = module.n_experts // ep
    # What each source sends to each of my experts: [ep sources, local experts].
    received = funcol.all_to_all_single(counts, [local] * ep, [local] * ep, group)
    received = funcol.wait_tensor(received).view(ep, local)
    # One host sync for both split lists (the all-to-all needs them as Python ints).
    send, recv = torch.stack([counts.view(ep, local).sum(1), received.sum(1)]).tolist()
    rows = funcol.all_to_all_single_autograd(x, recv, send, group)
    # Source-major -> expert-major: a stable sort by local expert id keeps each source's order.
    expert_ids = torch.arange(local, device=x.device).repeat(ep).repeat_interleave(
        received.flatten(), output_size=sum(recv))
    order = torch.argsort(expert_ids, stable=True)
    out = module.compute(rows[order], received.sum(0), *local_weights(module))
    back = out[torch.argsort(order)]
    return funcol.all_to_all_single_autograd(back, send, recv, group)


def has_experts(model: nn.Module, experts: str) -> bool:
    """Whether any module of `model` matches the experts pattern (a dense model: no)."""
    return any(pattern_matches(experts, n) for n in named_modules_clean(model))


def apply_expert_fsdp(model: nn.Module, mesh: DeviceMesh, *, experts: str = "layers.*.moe.experts",
                      grad_divide: float | None = None, reshard_after_forward: bool | int = True,
                      mp_policy=None, offload_policy=None) -> list[nn.Module]:
    """fully_shard each experts module on its own `mesh` (efsdp, or (dp_replicate, efsdp)): the
    experts' own FSDP unit, before the blocks that hold them are wrapped on the dense mesh.

    Placement: experts on dim 0 while every rank gets whole experts; dim 1 when the weights are
    already expert-parallel DTensors or the mesh outnumbers them (no padded experts). grad_divide:
    what their summed gradients are divided by; pass the dense data-parallel size (FSDP's default
    would divide by the expert mesh only, which is ep x too small a divisor when EP borrows data
    ranks, and counts tensor-parallel ranks that see different tokens of the same sequences)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard

    wrapped = []
    shard_size = mesh.size(mesh.ndim - 1)
    for _, module in check_experts(model, experts, 1):
        dtensor = any(isinstance(p, DTensor) for _, p in expert_weights(module))
        whole = not dtensor and module.n_experts % shard_size == 0
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward,
                    mp_policy=mp_policy or MixedPrecisionPolicy(), offload_policy=offload_policy or OffloadPolicy(),
                    shard_placement_fn=lambda p, whole=whole: Shard(0 if whole or p.dim() < 2 else 1))
        if grad_divide is not None:
            module.set_gradient_divide_factor(float(grad_divide))
            # gloo has no pre-multiplied sum: sum, then divide. (Not when the shard dim has one
            # rank: torch then divides in its no-communication copy and again afterwards.)
            if mesh.device_type == "cpu" and shard_size > 1:
                module.set_force_sum_reduction_for_comms(True)
        wrapped.append(module)
    return wrapped
