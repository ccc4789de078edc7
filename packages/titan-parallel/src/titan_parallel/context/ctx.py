"""The context a context-parallel training step runs in: shard the sequence buffers, switch the
attention to its distributed form, and put everything back afterwards.

ring: torch's experimental context_parallel, which swaps scaled_dot_product_attention for ring
attention (kv shards rotated by all-gather or all-to-all) over flash / efficient / cuDNN kernels;
GPU only (torch has no CPU sharding rule for the SDPA ops).
ulysses: contiguous shards plus the hooks installed by apply_ulysses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch.distributed.device_mesh import DeviceMesh

from titan_parallel.context.ulysses import ulysses_active
from titan_parallel.context.validate import resolve_load_balance, validate_cp
from titan_parallel.errors import ParallelConfigError


def _check_buffers(buffers: Sequence[torch.Tensor], seq_dims: Sequence[int],
                   no_restore: Sequence[torch.Tensor]) -> int:
    if len(buffers) != len(seq_dims):
        raise ParallelConfigError(f"got {len(buffers)} buffers but {len(seq_dims)} seq_dims; give one dim per buffer")
    if not buffers:
        raise ParallelConfigError("context parallel needs at least one buffer (the input tokens) to shard")
    for i, b in enumerate(buffers):
        if isinstance(b, torch.nn.Parameter) or b.requires_grad:
            raise ParallelConfigError(
                f"buffers[{i}] requires grad; shard inputs, labels and position tables, not parameters "
                "or activations"
            )
    lengths = [b.shape[d] for b, d in zip(buffers, seq_dims)]
    if len(set(lengths)) != 1:
        raise ParallelConfigError(
            f"buffers have different lengths along their seq_dims: {lengths}; slice position tables "
            "(e.g. RoPE) to the batch's sequence length before context parallel"
        )
    for t in no_restore:
        if not any(t is b for b in buffers):
            raise ParallelConfigError("no_restore_buffers must be a subset of buffers")
    return lengths[0]


@contextlib.contextmanager
def _ring(cp_mesh: DeviceMesh, buffers: list[torch.Tensor], seq_dims: list[int],
          no_restore: set[torch.Tensor], rotate: str, load_balance: bool) -> Iterator[None]:
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import _cp_options, set_rotate_method

    old = (_cp_options.enable_load_balance, _cp_options.rotate_method)
    _cp_options.enable_load_balance = load_balance  # torch reads it when sharding and in the ring
    set_rotate_method(rotate)
    try:
        with contextlib.ExitStack() as stack:
            if cp_mesh.device_type == "cuda":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                # ring attention exists for these kernels only (not the math fallback)
                stack.enter_context(sdpa_kernel(
                    [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]))
            stack.enter_context(context_parallel(
                cp_mesh, buffers=buffers, buffer_seq_dims=seq_dims, no_restore_buffers=no_restore))
            yield
    finally:
        _cp_options.enable_load_balance, _cp_options.rotate_method = old


@contextlib.contextmanager
def _contiguous(cp_mesh: DeviceMesh, buffers: list[torch.Tensor], seq_dims: list[int],
                no_restore: set[torch.Tensor]) -> Iterator[None]:
    rank, cp = cp_mesh.get_local_rank(), cp_mesh.size()
    originals = [None if any(b is t for t in no_restore) else b.clone() for b in buffers]
    with torch.no_grad():
        for b, d in zip(buffers, seq_dims):
            shard = b.chunk(cp, dim=d)[rank].clone()
            b.resize_(shard.shape).copy_(shard)  # in place, as torch's ring does: callers keep references
    try:
        with ulysses_active():
            yield
    finally:
        with torch.no_grad():
            for b, orig in zip(buffers, originals):
                if orig is not None:
                    b.resize_(orig.shape).copy_(orig)


@contextlib.contextmanager
def context_parallel_ctx(cp_mesh: DeviceMesh, *, buffers: Sequence[torch.Tensor], seq_dims: Sequence[int],
                         no_restore_buffers: Sequence[torch.Tensor] | None = None, method: str = "ring",
                         rotate: str = "allgather", load_balance: bool | None = None) -> Iterator[None]:
    """Run the enclosed forward/backward with the sequence split across `cp_mesh`.

    buffers: tensors with a sequence dim, sharded in place on entry and restored on exit: the
        input tokens, the labels, position tables such as RoPE (all the same length along their
        seq_dims; never parameters). Put those not needed afterwards in no_restore_buffers.
    method: "ring" (torch's ring attention over SDPA; GPU) or "ulysses" (needs apply_ulysses on
        the model once; any device).
    rotate: how ring attention moves kv shards, "allgather" or "alltoall".
    load_balance: head-tail sharding of the causal workload (default on for ring, off for ulysses).
    Raises ParallelConfigError (via validate_cp) before sharding anything.
    """
    buffers = list(buffers)
    seq_dims = list(seq_dims)
    no_restore = list(no_restore_buffers or ())
    seq_len = _check_buffers(buffers, seq_dims, no_restore)
    validate_cp(cp_degree=cp_mesh.size(), seq_len=seq_len, method=method, load_balance=load_balance,
                rotate=rotate)
    balanced = resolve_load_balance(method, load_balance)
    if method == "ring":
        with _ring(cp_mesh, buffers, seq_dims, set(no_restore), rotate, balanced):
            yield
    else:
        with _contiguous(cp_mesh, buffers, seq_dims, set(no_restore)):
            yield
