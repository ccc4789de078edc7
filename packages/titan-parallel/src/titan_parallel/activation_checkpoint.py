"""Activation checkpointing: full, every k-th unit, or per-op selective with a save list.

Per-op policy (mode="selective", no layer_freq): inside each unit, the outputs of these ops are
saved and everything else (norms, activations, elementwise ops, views) is recomputed in backward:

- attention: SDPA's flash / efficient / cuDNN / CPU-flash kernels and FlexAttention;
- matmuls (mm, addmm, float8 _scaled_mm), except every `recompute_every_nth_matmul`-th one
  (default 2: the 2nd, 4th, ... matmul of each unit is recomputed), which halves their memory
  at the cost of recomputing half of the (cheaper, input-saved) projections;
- reduce_scatter from sequence parallel and expert parallel's all-to-alls (a recompute would
  communicate again);
- aten.max, whose result is float8's amax: recomputing it could change the scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    checkpoint_wrapper,
)
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from titan_parallel.errors import ParallelConfigError, one_of
from titan_parallel.modules import Units, replace_module, resolve_units

AC_MODES = ("none", "full", "selective")


def _ops(*paths: str) -> frozenset:
    """The ops that exist in this torch build (some kernels are build- or version-specific)."""
    found = set()
    for path in paths:
        obj: object = torch.ops
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            found.add(obj)
    return frozenset(found)


MATMUL_OPS = _ops("aten.mm.default", "aten.addmm.default", "aten._scaled_mm.default")
DEFAULT_SAVE_OPS = MATMUL_OPS | _ops(
    "aten._scaled_dot_product_flash_attention.default",
    "aten._scaled_dot_product_efficient_attention.default",
    "aten._scaled_dot_product_cudnn_attention.default",
    "aten._scaled_dot_product_flash_attention_for_cpu.default",
    "_c10d_functional.reduce_scatter_tensor.default",
    # expert-parallel dispatch (counts, then tokens with autograd): not sent again in recompute
    "_c10d_functional.all_to_all_single.default",
    "_c10d_functional_autograd.all_to_all_single.default",
    "aten.max.default",
) | frozenset(
    op for op in [getattr(torch._higher_order_ops, "flex_attention", None)] if op is not None and callable(op)
)


@dataclass(frozen=True)
class OpPolicy:
    """Which op outputs per-op selective AC keeps. save_ops: ops whose outputs are saved
    (default DEFAULT_SAVE_OPS). recompute_every_nth_matmul: of the matmuls in save_ops, counted
    per unit call, recompute every n-th (2: every other; 1: all; 0: none, save every matmul)."""

    save_ops: frozenset = DEFAULT_SAVE_OPS
    recompute_every_nth_matmul: int = 2

    def context_fn(self) -> Callable[[], tuple]:
        """checkpoint's context_fn: a plain closure, the form torch.compile traces on every
        supported release (2.11's dynamo rejects other callables here)."""
        save_ops, n = self.save_ops, self.recompute_every_nth_matmul

        def context_fn() -> tuple:
            return _selective_contexts(save_ops, n)

        return context_fn


def _selective_contexts(save_ops: frozenset, n: int) -> tuple:
    """Fresh forward/recompute contexts for one checkpointed call: counters start at 0, so
    forward and recompute number the matmuls alike even when recompute stops early."""
    counts = {"forward": 0, "recompute": 0}

    def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        if op not in save_ops:
            return CheckpointPolicy.PREFER_RECOMPUTE
        if op in MATMUL_OPS and n > 0:
            key = "recompute" if ctx.is_recompute else "forward"
            counts[key] += 1
            if counts[key] % n == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE

    return create_selective_checkpoint_contexts(policy)


def check_ac(*, mode: str, layer_freq: int | str | None = None, op_policy: object = None) -> int | None:
    """Validate apply_ac's options; returns the unit frequency (None: all units / per-op)."""
    if mode not in AC_MODES:
        raise one_of("mode", mode, AC_MODES)
    freq = _layer_freq(layer_freq)
    if mode != "selective" and (freq is not None or op_policy is not None):
        raise ParallelConfigError(
            f"layer_freq/op_policy only apply to mode='selective', got mode={mode!r}"
        )
    if freq is not None and op_policy is not None:
        raise ParallelConfigError("give layer_freq (every k-th unit) or op_policy (per-op), not both")
    return freq


def apply_ac(
    model: nn.Module,
    *,
    mode: Literal["none", "full", "selective"] = "full",
    layer_freq: int | str | None = None,
    op_policy: OpPolicy | Callable[..., CheckpointPolicy] | None = None,
    units: Units = None,
    preserve_rng_state: bool = False,
) -> nn.Module:
    """Wrap units (default: the repeated blocks) in torch's checkpoint_wrapper.

    mode="full": every unit recomputes its forward in backward. mode="selective" with
    layer_freq=k (an int, or torchtitan's selective_ac_option string "k"): every k-th unit fully
    checkpointed, the rest not. mode="selective" without layer_freq (or "op"): per-op selective
    with `op_policy` (default OpPolicy(): the save list in this module's docstring; or a
    stateless `policy(ctx, op, *args, **kwargs) -> CheckpointPolicy`). mode="none": no change.
    preserve_rng_state=False: random ops (dropout) are not replayed identically in recompute.
    Apply after TP and before compile and FSDP. Returns the model (units replaced in place).
    """
    freq = check_ac(mode=mode, layer_freq=layer_freq, op_policy=op_policy)
    if mode == "none":
        return model
    blocks = [(n, m) for n, m in resolve_units(model, units) if m is not model]
    if not blocks:
        raise ParallelConfigError("apply_ac: units resolve to the root only; AC wraps submodules")
    kwargs: dict = {"checkpoint_impl": CheckpointImpl.NO_REENTRANT, "preserve_rng_state": preserve_rng_state}
    if mode == "selective" and freq is None:
        policy = op_policy if op_policy is not None else OpPolicy()
        if isinstance(policy, OpPolicy):
            kwargs["context_fn"] = policy.context_fn()
        elif callable(policy):
            def context_fn(policy=policy) -> tuple:
                return create_selective_checkpoint_contexts(policy)

            kwargs["context_fn"] = context_fn
        else:
            raise ParallelConfigError(f"op_policy must be an OpPolicy or a callable, got {policy!r}")
    for index, (name, block) in enumerate(blocks):
        if freq is not None and (index + 1) % freq != 0:
            continue
        replace_module(model, name, checkpoint_wrapper(block, **kwargs))
    return model


def _layer_freq(value: int | str | None) -> int | None:
    if value is None or value == "op":
        return None
    try:
        freq = int(value)
    except (TypeError, ValueError):
        freq = 0
    if freq < 1 or isinstance(value, bool):
        raise ParallelConfigError(
            f"layer_freq={value!r} is invalid: use a positive integer k (checkpoint every k-th unit), "
            "or 'op'/None for per-op selective checkpointing"
        )
    return freq
