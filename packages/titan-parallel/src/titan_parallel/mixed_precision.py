"""Mixed precision for one process without FSDP: float32 parameters, bf16 compute copies per unit.

What FSDP2 does on one rank, minus its collectives' copies. FSDP2 at world size 1 still casts
each parameter into a new tensor and copies it into the gathered buffer (forward, and again in
backward after resharding), then copies each gradient into a float32 reduce buffer and from there
into the output buffer: about six passes over the weights per step. Here a unit's parameters are
cast once as its forward starts, put in place of the float32 ones for that forward, and dropped
when it ends; what autograd saves of them is swapped for a note and cast again when backward
needs it (FSDP's reshard-after-forward, without the buffers). Gradients reach the float32
parameters' `.grad` through the cast's own backward. Three passes in all.

The optimizer, clipping and checkpoints see ordinary float32 parameters with their usual names.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_map

from titan_parallel.data_parallel import as_dtype
from titan_parallel.errors import ParallelConfigError
from titan_parallel.master_weights import ComputeCopies, PersistentCast
from titan_parallel.modules import Units, resolve_units


class _UnitCast:
    """The hooks of one unit: cast its own parameters before its forward, restore after.

    Slots are (module, name) pairs, read at every forward: moving or initializing the model
    (to_empty, load_state_dict with assign) may put new parameter objects there."""

    def __init__(self, slots: list[tuple[nn.Module, str]], dtype: torch.dtype, drop_saved: bool):
        self.slots, self.dtype, self.drop_saved = slots, dtype, drop_saved
        self._originals: list[torch.Tensor] = []
        self._saved_ctx = None

    def before(self, module: nn.Module, args) -> None:
        self._originals = [owner._parameters[name] for owner, name in self.slots]
        casts = {id(p): p.to(self.dtype) for p in self._originals}  # tied weights: cast once
        for (owner, name), p in zip(self.slots, self._originals):
            owner._parameters[name] = casts[id(p)]  # a plain tensor for this forward only
        if self.drop_saved and torch.is_grad_enabled():
            index = {casts[id(p)].untyped_storage().data_ptr(): p for p in self._originals}
            self._saved_ctx = torch.autograd.graph.saved_tensors_hooks(self._packer(index), self._unpack)
            self._saved_ctx.__enter__()

    def after(self, module: nn.Module, args, output):
        if self._saved_ctx is not None:
            self._saved_ctx.__exit__(None, None, None)
            self._saved_ctx = None
        for (owner, name), p in zip(self.slots, self._originals):
            owner._parameters[name] = p
        self._originals = []
        return output

    def _packer(self, index: dict[int, torch.Tensor]):
        dtype = self.dtype

        def pack(t: torch.Tensor):
            # A saved view of a cast (e.g. a transposed weight) is kept as (param, view) instead.
            param = index.get(t.untyped_storage().data_ptr()) if t.dtype == dtype and type(t) is torch.Tensor else None
            if param is None:
                return t
            return (param, t.size(), t.stride(), t.storage_offset())
        return pack

    def _unpack(self, saved):
        if not isinstance(saved, tuple):
            return saved
        param, size, stride, offset = saved
        return param.to(self.dtype).as_strided(size, stride, offset)


def _hook_target(unit: nn.Module) -> tuple[nn.Module, bool]:
    """Where a unit's hooks go, and whether they may drop saved casts. A compiled unit: outside
    the compiled graph (whose saved inputs the hooks then replace). An eagerly checkpointed unit:
    inside the checkpoint, so recomputation casts again; its saved tensors are already dropped
    (and its own saved-tensor hooks must stay the innermost)."""
    inner = unit._modules.get("_checkpoint_wrapped_module")
    if inner is not None:
        return inner, False
    return unit, True


def check_mixed_precision(model: nn.Module, param_dtype) -> torch.dtype:
    """The dtype, after checking that no parameter is already distributed."""
    dtype = as_dtype("param_dtype", param_dtype)
    if dtype is None or not dtype.is_floating_point:
        raise ParallelConfigError(f"param_dtype must be a floating dtype such as 'bfloat16', got {param_dtype!r}")
    for name, p in model.named_parameters():
        if isinstance(p, DTensor):
            raise ParallelConfigError(
                f"apply_mixed_precision is for one process without data or tensor parallelism, but parameter "
                f"{name!r} is a DTensor; use apply_fsdp's param_dtype / reduce_dtype there")
    return dtype


def apply_mixed_precision(model: nn.Module, *, param_dtype: torch.dtype | str = "bfloat16",
                          units: Units = None, cast_inputs: bool = True,
                          keep_for_backward: bool = False, persistent: bool = False) -> nn.Module:
    """Train `model` (float32 parameters, one process) with `param_dtype` compute: each unit
    (default: the repeated blocks) and then the root (whatever no unit holds: embeddings, final
    norm, output) casts its parameters as its forward starts and drops the copies after it; backward
    casts again what it needs, and gradients accumulate in float32 `.grad`. Numerically the same
    as FSDP2's MixedPrecisionPolicy(param_dtype, reduce_dtype=float32) on one rank.

    cast_inputs: floating-point tensors given to the model's forward are cast to param_dtype
    first (FSDP2 does this at every unit; here only at the root, so e.g. a float32 RoPE table the
    root hands its blocks stays float32). keep_for_backward: what autograd saves of the casts stays
    alive until backward instead of being cast again there (FSDP's reshard_after_forward=False: one
    pass over the weights less per step, the bf16 copy of every parameter held at the peak).
    persistent: each parameter's copy lives between steps and collects its gradient in
    param_dtype on its own `.grad` (the float32 `.grad` stays None); step with MasterAdamW, which
    writes the copies as it updates the weights (master_weights.py; compute_copies(model) finds
    them). Apply after activation checkpointing and compile (as FSDP would be). Buffers keep their
    dtype. Returns the model (hooks added in place; parameter names and dtypes unchanged).
    """
    dtype = check_mixed_precision(model, param_dtype)
    copies = None
    if persistent:
        copies = ComputeCopies(dtype)
        model._titan_compute_copies = copies
    blocks = [m for _, m in resolve_units(model, units) if m is not model]
    in_units: set[int] = set()
    for block in blocks:
        target, drop_saved = _hook_target(block)
        _attach(target, _slots(target), dtype, drop_saved and not keep_for_backward, copies)
        in_units.update(id(p) for p in block.parameters())
    if cast_inputs:
        model.register_forward_pre_hook(_input_caster(dtype), with_kwargs=True)
    rest = [s for s in _slots(model) if id(s[2]) not in in_units]
    if rest:
        _attach(model, rest, dtype, not keep_for_backward, copies)
    return model


def _input_caster(dtype: torch.dtype):
    def cast(module: nn.Module, args, kwargs):
        def one(x):
            return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        return tree_map(one, args), tree_map(one, kwargs)
    return cast


def _slots(module: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    return [(owner, name, p) for owner in module.modules()
            for name, p in owner._parameters.items() if p is not None and p.dtype.is_floating_point]


def _attach(target: nn.Module, slots, dtype: torch.dtype, drop_saved: bool, copies: ComputeCopies | None) -> None:
    slots = [(owner, name) for owner, name, p in slots if p.dtype != dtype]
    if not slots:
        return
    hooks = _UnitCast(slots, dtype, drop_saved) if copies is None else PersistentCast(slots, copies)
    target.register_forward_pre_hook(hooks.before)
    target.register_forward_hook(hooks.after, always_call=True)  # restore even if forward raises
