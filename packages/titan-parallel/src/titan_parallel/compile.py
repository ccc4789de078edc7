"""Per-block torch.compile: each unit compiled on its own.

Repeated blocks share one compiled graph (same code, parameters as inputs), so compile time does
not grow with depth, and hooks that FSDP puts on each block stay outside the compiled region.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from titan_parallel.modules import Units, clean_name, pattern_matches, replace_module, resolve_units


def apply_compile(
    model: nn.Module,
    *,
    units: Units = None,
    fullgraph: bool = True,
    backend: str = "inductor",
    eager: str | None = None,
    **compile_kwargs: Any,
) -> nn.Module:
    """Replace each unit (default: the repeated blocks) by `torch.compile(unit, fullgraph=...,
    backend=..., **compile_kwargs)`. A unit named '' compiles the root in place
    (`model.compile(...)`). Apply after TP and AC, before FSDP. Returns the model.

    eager: a module pattern (e.g. "layers.*.moe.experts") to leave uncompiled: a unit holding
    such a module has its other children compiled one by one instead, and the glue between
    them runs eagerly (a mixture of experts' routing has data-dependent sizes).

    Parameter names of compiled units gain an `_orig_mod.` segment; torch's distributed
    state-dict helpers (and Titan's checkpointing) drop it again.
    """
    kwargs = dict(fullgraph=fullgraph, backend=backend, **compile_kwargs)
    for name, block in resolve_units(model, units):
        if eager is not None and _holds(block, name, eager):
            _compile_around(block, name, eager, kwargs)
        elif block is model:
            model.compile(**kwargs)
        else:
            replace_module(model, name, torch.compile(block, **kwargs))
    return model


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
