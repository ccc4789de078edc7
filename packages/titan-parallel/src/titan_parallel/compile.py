"""Per-block torch.compile: each unit compiled on its own.

Repeated blocks share one compiled graph (same code, parameters as inputs), so compile time does
not grow with depth, and hooks that FSDP puts on each block stay outside the compiled region.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from titan_parallel.errors import ParallelConfigError
from titan_parallel.modules import Units, clean_name, pattern_matches, replace_module, resolve_units


def apply_compile(
    model: nn.Module,
    *,
    units: Units = None,
    fullgraph: bool = True,
    backend: str = "inductor",
    eager: str | None = None,
    memory_budget: float | None = None,
    **compile_kwargs: Any,
) -> nn.Module:
    """Replace each unit (default: the repeated blocks) by `torch.compile(unit, fullgraph=...,
    backend=..., **compile_kwargs)`. A unit named '' compiles the root in place
    (`model.compile(...)`). Apply after TP and AC, before FSDP. Returns the model.

    eager: a module pattern (e.g. "layers.*.moe.experts") to leave uncompiled: a unit holding
    such a module has its other children compiled one by one instead, and the glue between
    them runs eagerly (a mixture of experts' routing has data-dependent sizes).

    memory_budget (0..1; None: torch's default, 1.0): the activation memory each compiled unit
    may keep for backward, as a fraction of what saving every activation would take; torch's
    min-cut partitioner recomputes the cheapest rest (`torch._functorch.config.activation_memory_budget`,
    set only while each unit runs, so the compile its first call triggers sees it and nothing
    else does). 0 recomputes as much as it can, like full activation checkpointing inside the graph.

    Parameter names of compiled units gain an `_orig_mod.` segment; torch's distributed
    state-dict helpers (and Titan's checkpointing) drop it again.
    """
    if memory_budget is not None and not 0.0 <= memory_budget <= 1.0:
        raise ParallelConfigError(f"memory_budget = {memory_budget} must be within [0, 1] (a fraction of the "
                                  "activation memory that saving everything would take)")
    kwargs = dict(fullgraph=fullgraph, backend=backend, **compile_kwargs)
    for name, block in resolve_units(model, units):
        if eager is not None and _holds(block, name, eager):
            _compile_around(block, name, eager, kwargs)
            unit = block
        elif block is model:
            model.compile(**kwargs)
            unit = model
        else:
            unit = torch.compile(block, **kwargs)
            replace_module(model, name, unit)
        if memory_budget is not None:
            _run_under_budget(unit, memory_budget)
    return model


def _run_under_budget(unit: nn.Module, budget: float) -> None:
    """Hooks that set functorch's activation_memory_budget around each call of `unit` (its
    compile happens inside its first call) and put the previous value back, even on errors."""
    from torch._functorch import config as functorch_config

    previous: list[float] = []

    def before(module, args):
        previous.append(functorch_config.activation_memory_budget)
        functorch_config.activation_memory_budget = budget

    def after(module, args, output):
        if previous:
            functorch_config.activation_memory_budget = previous.pop()

    unit.register_forward_pre_hook(before)
    unit.register_forward_hook(after, always_call=True)


def _holds(module: nn.Module, name: str, eager: str) -> bool:
    return any(pattern_matches(eager, clean_name(f"{name}.{n}" if name else n))
               for n, _ in module.named_modules() if n)


def _compile_around(module: nn.Module, name: str, eager: str, kwargs: dict) -> None:
    """Compile each child of `module` except those matching `eager`; recurse into children
    that hold one."""
    for child_name, child in list(module.named_children()):
        full = clean_name(f"{name}.{child_name}" if name else child_name)
        if pattern_matches(eager, full):
            continue
        if _holds(child, full, eager):
            _compile_around(child, full, eager, kwargs)
        elif any(True for _ in child.parameters()) or any(True for _ in child.children()):
            setattr(module, child_name, torch.compile(child, **kwargs))
