"""Tensor-parallel styles for float8 linears: their all-gathers run in float8, not in bf16.

torchao's Float8ColwiseParallel / Float8RowwiseParallel / PrepareFloat8ModuleInput shard exactly
as torch's plain styles do, but cast the input to float8 (one scale per tensor) *before* the
sequence-parallel all-gather, and the output gradient before its backward all-gather: half the
bytes of bf16 on the wire, and the linear gets the float8 input it would have cast anyway. They
are correct only for the tensorwise recipe: with a rowwise recipe the pre-cast silently replaces
the recipe's own scaling, so rowwise linears keep the plain styles (as torchtitan does).

Which style a module gets is decided per module, after float8 conversion:
    ColwiseParallel / RowwiseParallel on a tensorwise Float8Linear -> the Float8 subclass
    PrepareModuleInput before a module whose every linear is a tensorwise Float8Linear
        -> PrepareFloat8ModuleInput (one float8 all-gather for wq, wk and wv together)
    anything else (a linear kept in high precision, a mixed block, other styles) -> unchanged
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
)


def is_tensorwise_float8(module: nn.Module) -> bool:
    """A torchao Float8Linear whose input, weight and gradient casts all scale per tensor."""
    if type(module).__name__ != "Float8Linear":
        return False
    from torchao.float8.config import ScalingGranularity

    cfg = module.config
    casts = (cfg.cast_config_input, cfg.cast_config_weight, cfg.cast_config_grad_output)
    return all(c.scaling_granularity is ScalingGranularity.TENSORWISE for c in casts)


def _retyped(style: ParallelStyle, cls: type) -> ParallelStyle:
    # The float8 styles subclass the plain ones and keep their attributes: copy them over.
    new = cls.__new__(cls)
    new.__dict__.update(copy.copy(style.__dict__))
    return new


def float8_style(style: ParallelStyle, module: nn.Module) -> ParallelStyle:
    """The float8 counterpart of `style` for `module`, or `style` itself where none applies."""
    from torchao.float8.float8_tensor_parallel import (
        Float8ColwiseParallel,
        Float8RowwiseParallel,
        PrepareFloat8ModuleInput,
    )

    kind = type(style)
    if kind in (ColwiseParallel, RowwiseParallel):
        if not is_tensorwise_float8(module):
            return style
        return _retyped(style, Float8ColwiseParallel if kind is ColwiseParallel else Float8RowwiseParallel)
    if kind is PrepareModuleInput:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]  # Float8Linear is one too
        # a float8 input reaching a plain linear fails in its matmul: all or nothing
        if not linears or not all(is_tensorwise_float8(m) for m in linears):
            return style
        new = _retyped(style, PrepareFloat8ModuleInput)
        new.float8_dtype = torch.float8_e4m3fn
        new.linear_mm_config = None
        new.fwd_config_submodule_fqn = None
        return new
    return style


def wants_float8_styles(mesh: DeviceMesh, float8_collectives: bool | None) -> bool:
    """None (auto): on CUDA meshes (NCCL moves float8; gloo has no float8 dtype). True / False: as given."""
    if float8_collectives is None:
        return mesh.device_type == "cuda"
    return bool(float8_collectives)
