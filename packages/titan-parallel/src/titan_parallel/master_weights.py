"""Persistent compute copies: bf16 weights that live between steps, written by the optimizer.

With apply_mixed_precision's per-forward casts, every step reads the float32 weights to cast them
(forward), casts each bf16 gradient to float32 (backward) and reads those float32 gradients twice
(norm, optimizer). Here each parameter's bf16 copy is a leaf tensor kept from step to step; the
units compute with it, autograd leaves the bf16 gradient on its `.grad`, and MasterAdamW
(master_adamw.py) reads that gradient and writes the new bf16 copy in the same pass that updates
the float32 weight and states. Single micro-batch numerics equal the per-forward casts: the bf16
gradient is what the cast's backward would have widened to float32 exactly.

A copy is cast again whenever its parameter changed outside the optimizer (a checkpoint load,
init_weights, `p.data = ...`): its version counter, storage or dtype tells.
"""

from __future__ import annotations

import torch
from torch import nn


class ComputeCopies:
    """The bf16 (param_dtype) copy of each float32 parameter, made at its unit's first forward."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        # id(param) -> [param, copy, (param._version, storage, dtype) when the copy was last written]
        self._entries: dict[int, list] = {}

    @staticmethod
    def _stamp(p: torch.Tensor) -> tuple:
        # the version counter moves with in-place writes (loads, init); `p.data = ...` (to_empty,
        # .to()) keeps it but changes the storage. Edits through `p.data.<op>_()` show in neither.
        return p._version, p.untyped_storage().data_ptr(), p.dtype

    def fresh(self, p: torch.Tensor) -> torch.Tensor:
        """The copy to compute with: made on first use, cast again if `p` changed since."""
        entry = self._entries.get(id(p))
        if (entry is None or entry[0] is not p or entry[1].device != p.device
                or (entry[1].is_inference() and not torch.is_inference_mode_enabled())):
            copy = p.detach().to(self.dtype).requires_grad_(p.requires_grad)
            self._entries[id(p)] = [p, copy, self._stamp(p)]
            return copy
        stamp = self._stamp(p)
        if entry[2] != stamp:  # written by someone else: a load, an init, a manual edit
            with torch.no_grad():
                entry[1].copy_(p)
            entry[2] = stamp
        if entry[1].requires_grad != p.requires_grad:  # frozen or unfrozen since
            entry[1].requires_grad_(p.requires_grad)
        return entry[1]

    def copy_of(self, p: torch.Tensor) -> torch.Tensor | None:
        entry = self._entries.get(id(p))
        return entry[1] if entry is not None and entry[0] is p else None

    def mark_written(self, params: list[torch.Tensor]) -> None:
        """The optimizer wrote these parameters and their copies together: both are current."""
        for p in params:
            entry = self._entries.get(id(p))
            if entry is not None and entry[0] is p:
                entry[2] = self._stamp(p)

    def forget(self, p: torch.Tensor) -> None:
        entry = self._entries.get(id(p))
        if entry is not None and entry[0] is p:
            del self._entries[id(p)]

    def zero_grad(self) -> None:
        for e in self._entries.values():
            e[1].grad = None


class PersistentCast:
    """The hooks of one unit: put its parameters' persistent copies in place for its forward."""

    def __init__(self, slots: list[tuple[nn.Module, str]], copies: ComputeCopies):
        self.slots, self.copies = slots, copies
        self._originals: list[torch.Tensor] = []
        self._last: list[torch.Tensor | None] = [None] * len(slots)

    def before(self, module: nn.Module, args) -> None:
        self._originals = [owner._parameters[name] for owner, name in self.slots]
        for i, ((owner, name), p) in enumerate(zip(self.slots, self._originals)):
            if self._last[i] is not None and self._last[i] is not p:
                self.copies.forget(self._last[i])  # replaced (to_empty, assign=True): drop the old copy
            self._last[i] = p
            owner._parameters[name] = self.copies.fresh(p)

    def after(self, module: nn.Module, args, output):
        for (owner, name), p in zip(self.slots, self._originals):
            owner._parameters[name] = p
        self._originals = []
        return output


def compute_copies(model: nn.Module) -> ComputeCopies | None:
    """The persistent copies apply_mixed_precision(model, persistent=True) keeps, else None."""
    return getattr(model, "_titan_compute_copies", None)
