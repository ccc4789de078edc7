"""Layout-independent initialization of a model built on the meta device and parallelized.

A model whose `init_weights()` computes each full tensor from the seed and writes it with
`param.copy_(full)` gets exactly its own shard under FSDP, TP or both: inside `init_context()` a
plain tensor meeting a DTensor counts as replicated, so `copy_` keeps the local piece.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.distributed.tensor.experimental import implicit_replication

from titan_parallel.errors import ParallelConfigError


@contextlib.contextmanager
def init_context() -> Iterator[None]:
    """No autograd, and plain tensors combine with DTensors as if replicated."""
    with torch.no_grad(), implicit_replication():
        yield


def init_weights(
    model: nn.Module,
    init_fn: Callable[[nn.Module], object] | None = None,
    *,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Allocate `model`'s meta tensors on `device` (when given), then run `init_fn(model)` (default:
    `model.init_weights()`) inside `init_context()`. Returns the model.

    Use after all appliers (TP, FSDP, ...) and before building the optimizer. With
    apply_fsdp(cpu_offload=True) pass device="cpu".
    """
    if device is not None:
        model.to_empty(device=device)
    elif any(t.is_meta for t in _tensors(model)):
        raise ParallelConfigError(
            "init_weights: the model still has meta tensors; pass device= (e.g. 'cuda' or 'cpu') "
            "to allocate them first"
        )
    if init_fn is None:
        init_fn = getattr(model, "init_weights", None)
        if not callable(init_fn):
            raise ParallelConfigError(
                f"init_weights: {type(model).__name__} has no init_weights() method; pass init_fn="
            )
        with init_context():
            init_fn()
    else:
        with init_context():
            init_fn(model)
    return model


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()
