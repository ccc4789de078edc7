"""Stateful wrappers that make model and optimizer state layout-independent.

torch's get/set_model_state_dict and get/set_optimizer_state_dict key everything by the
parameter's fully qualified name (FQN) in the unwrapped model and keep FSDP/TP shards as DTensors,
so DCP can save under one layout (FSDP on 8 ranks) and load under another (TP 2, one process).
Pipeline stages each hold a disjoint subset of the model's modules under the full model's FQNs;
merging the parts' dicts gives the same keys as the whole model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from .errors import CheckpointError, short_list


def as_parts(model_parts: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """A list of modules from one module or a sequence of them (pipeline stages)."""
    parts = [model_parts] if isinstance(model_parts, nn.Module) else list(model_parts)
    if not parts or not all(isinstance(p, nn.Module) for p in parts):
        raise CheckpointError(
            f"model_parts must be an nn.Module or a non-empty list of them, got {model_parts!r}")
    return parts


def _merge(dicts: list[dict[str, Any]], what: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for sd in dicts:
        clash = [k for k in sd if k in merged and merged[k] is not sd[k]]
        if clash:
            raise CheckpointError(
                f"{what}: model parts share the keys {short_list(clash)}; pipeline stages must "
                "hold disjoint parameters (under the full model's names)")
        merged.update(sd)
    return merged


def model_state_dict(model_parts: Sequence[nn.Module], *,
                     options: StateDictOptions | None = None) -> dict[str, Any]:
    """The merged FQN -> tensor/DTensor dict of all parts (references, not copies)."""
    return _merge([get_model_state_dict(p, options=options) for p in model_parts], "model state")


def load_model_parts(model_parts: Sequence[nn.Module], state_dict: dict[str, Any], *,
                     options: StateDictOptions | None = None) -> None:
    """Give each part the entries of `state_dict` under its own FQNs (strict per part)."""
    for part in model_parts:
        keys = get_model_state_dict(part).keys()
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise CheckpointError(f"model state has no entry for {short_list(missing)}")
        set_model_state_dict(part, {k: state_dict[k] for k in keys}, options=options)


class ModelState(Stateful):
    """The model (all pipeline parts on this rank) as one Stateful with full-model FQN keys."""

    def __init__(self, model_parts: nn.Module | Sequence[nn.Module]) -> None:
        self.model_parts = as_parts(model_parts)

    def state_dict(self) -> dict[str, Any]:
        return model_state_dict(self.model_parts)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_model_parts(self.model_parts, state_dict)


_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


class OptimizerState(Stateful):
    """Optimizers of the model parts (one per part) with flattened FQN keys, so state reshards.

    Keys look like `state.layers.0.attention.wq.weight.exp_avg` and
    `param_groups.layers.0.attention.wq.weight.lr`: they name parameters, never positions, so a
    checkpoint loads under any sharding or pipeline split.
    """

    def __init__(self, model_parts: nn.Module | Sequence[nn.Module],
                 optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer]) -> None:
        self.model_parts = as_parts(model_parts)
        opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        if len(opts) != len(self.model_parts) or not all(
                isinstance(o, torch.optim.Optimizer) for o in opts):
            raise CheckpointError(
                f"optimizers must be one torch.optim.Optimizer per model part: got {len(opts)} "
                f"for {len(self.model_parts)} part(s)")
        self.optimizers = opts

    def state_dict(self) -> dict[str, Any]:
        return _merge([get_optimizer_state_dict(m, o, options=_FLAT)
                       for m, o in zip(self.model_parts, self.optimizers)], "optimizer state")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for m, o in zip(self.model_parts, self.optimizers):
            set_optimizer_state_dict(m, o, state_dict, options=_FLAT)


def check_states(states: Mapping[str, Any]) -> dict[str, Any]:
    """`states` as a dict, after checking names and that every value can save and load itself."""
    if not isinstance(states, Mapping) or not states:
        raise CheckpointError(f"states must be a non-empty dict of name -> Stateful, got {states!r}")
    for name, value in states.items():
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            raise CheckpointError(f"state name {name!r} must be a non-empty str without '.' or '/'")
        # Raw modules/optimizers would save position-keyed or wrapper-prefixed state that
        # does not reshard; the wrappers key everything by the model's own FQNs.
        raw = isinstance(value, (nn.Module, torch.optim.Optimizer))
        if raw or not isinstance(value, (Stateful, dict)):
            raise CheckpointError(
                f"state {name!r} is a {type(value).__name__}; pass an object with state_dict() "
                "and load_state_dict() (wrap models in ModelState, optimizers in OptimizerState)")
    return dict(states)
