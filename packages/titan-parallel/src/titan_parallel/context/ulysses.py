"""Ulysses-style context parallel: trade sequence shards for head shards around attention.

Inside attention each CP rank holds q, k, v for its contiguous sequence shard and all heads,
[B, H, S/cp, D]. One all-to-all gives it every position for H/cp heads, [B, H/cp, S, D]; the
unchanged attention core then attends causally over the whole sequence, and a second all-to-all
returns [B, H, S/cp, D]. Unlike ring attention it needs heads divisible by cp, but it works with
any attention core (any SDPA backend, flex or custom kernels) and does two collectives per
attention instead of cp - 1 rotations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from titan_parallel.errors import ParallelConfigError
from titan_parallel.modules import match_modules

_ACTIVE = [0]  # >0 while inside context_parallel_ctx(method="ulysses"); hooks are no-ops otherwise


@contextlib.contextmanager
def ulysses_active() -> Iterator[None]:
    """Turn the Ulysses hooks on (context_parallel_ctx does this for method='ulysses')."""
    _ACTIVE[0] += 1
    try:
        yield
    finally:
        _ACTIVE[0] -= 1


def _all_to_all(x: torch.Tensor, group: Any) -> torch.Tensor:
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    # Splits dim 0 into equal chunks, chunk j to rank j; received chunks stack on dim 0 by source.
    return all_to_all_single_autograd(x.contiguous(), None, None, group)


def seq_to_heads(x: torch.Tensor, cp: int, group: Any, *, name: str = "attention") -> torch.Tensor:
    """[B, H, S/cp, D] (this rank's positions, all heads) -> [B, H/cp, S, D] (its heads, all positions)."""
    b, h, s, d = x.shape
    if h % cp:
        raise ParallelConfigError(
            f"Ulysses context parallel at {name!r}: {h} heads per rank are not divisible by cp={cp}; "
            "use ring context parallel or a cp degree that divides the heads"
        )
    x = x.reshape(b, cp, h // cp, s, d).permute(1, 0, 2, 3, 4)  # [cp(head group), B, H/cp, S/cp, D]
    x = _all_to_all(x, group)  # [cp(source = sequence shard), B, H/cp, S/cp, D]
    return x.permute(1, 2, 0, 3, 4).reshape(b, h // cp, cp * s, d)


def heads_to_seq(x: torch.Tensor, cp: int, group: Any) -> torch.Tensor:
    """[B, H/cp, S, D] -> [B, H, S/cp, D]: the inverse of seq_to_heads."""
    b, hl, s, d = x.shape
    x = x.reshape(b, hl, cp, s // cp, d).permute(2, 0, 1, 3, 4)  # [cp(sequence shard), B, H/cp, S/cp, D]
    x = _all_to_all(x, group)  # [cp(source = head group), B, H/cp, S/cp, D]
    return x.permute(1, 0, 2, 3, 4).reshape(b, cp * hl, s // cp, d)


def apply_ulysses(model: nn.Module, cp_mesh: DeviceMesh, *,
                  attention_modules: str = "layers.*.attention.sdpa") -> list[str]:
    """Make every attention core matching `attention_modules` attend Ulysses-style over `cp_mesh`;
    return the names of the modules changed. The pattern is a module name with '*' for one name
    segment; activation-checkpoint and compile wrappers are looked through. Apply after TP and
    before activation checkpointing, compile and FSDP.

    A core's forward(q, k, v, *rest) must take [B, H, S_local, D] tensors and return attention
    output of the same layout, attending causally (or fully) over the sequence it is given. The
    change is forward hooks, so parameter names and the module tree stay as they were; the hooks
    act only inside context_parallel_ctx(..., method="ulysses"), which also shards the inputs.
    """
    cp = cp_mesh.size()
    group = cp_mesh.get_group()
    found = match_modules(model, attention_modules, arg="attention_modules")
    for name, module in found:
        if getattr(module, "_titan_ulysses", False):
            raise ParallelConfigError(f"apply_ulysses was already applied to {name!r}")

        def pre(mod: nn.Module, args: tuple, kwargs: dict, _name: str = name) -> Any:
            if not _ACTIVE[0] or cp == 1:
                return None
            if len(args) < 3:
                raise ParallelConfigError(f"Ulysses expects {_name}(q, k, v, ...) with positional q, k, v")
            q, k, v = (seq_to_heads(t, cp, group, name=_name) for t in args[:3])
            return (q, k, v, *args[3:]), kwargs

        def post(mod: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> Any:
            if not _ACTIVE[0] or cp == 1:
                return None
            return heads_to_seq(out, cp, group)

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post, with_kwargs=True)
        module._titan_ulysses = True
    return [name for name, _ in found]
