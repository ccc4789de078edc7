"""Per-block torch.compile: each unit compiled on its own.

Repeated blocks share one compiled graph (same code, parameters as inputs), so compile time does
not grow with depth, and hooks that FSDP puts on each block stay outside the compiled region.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from titan_parallel.modules import Units, replace_module, resolve_units


def apply_compile(
    model: nn.Module,
    *,
    units: Units = None,
    fullgraph: bool = True,
    backend: str = "inductor",
    **compile_kwargs: Any,
) -> nn.Module:
    """Replace each unit (default: the repeated blocks) by `torch.compile(unit, fullgraph=...,
    backend=..., **compile_kwargs)`. A unit named '' compiles the root in place
    (`model.compile(...)`). Apply after TP and AC, before FSDP. Returns the model.

    Parameter names of compiled units gain an `_orig_mod.` segment; torch's distributed
    state-dict helpers (and Titan's checkpointing) drop it again.
    """
    for name, block in resolve_units(model, units):
        if block is model:
            model.compile(fullgraph=fullgraph, backend=backend, **compile_kwargs)
        else:
            replace_module(model, name, torch.compile(block, fullgraph=fullgraph, backend=backend,
                                                      **compile_kwargs))
    return model
