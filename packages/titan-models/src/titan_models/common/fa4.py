"""FlashAttention-4 (the flash-attn-4 package's CuTe DSL kernels) as SDPA's flash kernel.

torch (>= 2.11) can route SDPA's FLASH_ATTENTION backend, forward and backward, to FA4 on
compute capability 9.x and 10.x (`torch.nn.attention.activate_flash_attention_impl`). Its
wrapper reads two values from `flash_attn.cute.interface._flash_attn_fwd`, which flash-attn-4's
4.0 betas extend to five (out, lse, and three optional tensors): registered as is, the first call
fails. This module is the module torch's wrapper is pointed at instead: the same two functions,
returning what the wrapper expects.

Use: `activate_fa4()` once per process, then SDPA with the flash backend first (the sdpa core's
kernel name "fa4"). Process-wide, as torch's registry is: every flash-backend SDPA call then runs
FA4. Why: on Hopper at head_dim 64 cuDNN's kernel runs ~370-390 TF/s; FA4's is meant to go higher.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from typing import Any

import torch
from titan_models.errors import ModelConfigError

FA4_MODULE = "flash_attn.cute.interface"
IMPL_NAME = "titan-fa4"  # the name in torch's flash-attention registry
# set by activate_fa4: what compiled code checks (a traceable read; the registry call is not)
_activated = {"ever": False}


def _real():
    return importlib.import_module(FA4_MODULE)


@functools.cache
def _accepted(fn) -> frozenset[str] | None:
    """The keyword names fn takes (None: any, it has **kwargs)."""
    params = inspect.signature(fn).parameters
    return None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else frozenset(params)


def _call(fn, args, kwargs):
    """fn(*args, **kwargs) without the keyword arguments fn does not take, when they carry no
    information (None, or num_splits 1); any other unknown one is an error, not dropped."""
    params = _accepted(fn)
    if params is not None:
        extra = {k: v for k, v in kwargs.items() if k not in params}
        meaningful = {k: v for k, v in extra.items() if v is not None and not (k == "num_splits" and v == 1)}
        if meaningful:
            raise RuntimeError(f"flash-attn-4's {fn.__name__} takes no {sorted(meaningful)}: "
                               "this flash-attn-4 release does not match torch's FA4 wrapper")
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def _flash_attn_fwd(q, k, v, **kwargs):
    """(out, lse), as torch's FA4 wrapper unpacks it."""
    result = _call(_real()._flash_attn_fwd, (q, k, v), kwargs)
    return (result[0], result[1]) if isinstance(result, tuple) else result


def _flash_attn_bwd(*args, **kwargs):
    """(dq, dk, dv) (a learnable sink's gradient, which this path never asks for, is left out)."""
    return tuple(_call(_real()._flash_attn_bwd, args, kwargs)[:3])


def fa4_problem(device: torch.device | str | None = None) -> str | None:
    """Why FA4 cannot run here (None: it can): torch without the flash-impl registry, no CUDA
    device of compute capability 9.x or 10.x, or flash-attn-4 not importable."""
    attention = importlib.import_module("torch.nn.attention")
    if not hasattr(attention, "register_flash_attention_impl"):
        return f"torch {torch.__version__} has no flash-attention registry (needs torch >= 2.11)"
    if not torch.cuda.is_available():
        return "no CUDA device (FA4 runs on compute capability 9.x and 10.x GPUs)"
    major, minor = torch.cuda.get_device_capability(device)
    if major not in (9, 10):
        return f"the GPU has compute capability {major}.{minor}; FA4 needs 9.x (Hopper) or 10.x (Blackwell)"
    try:
        _real()
    except Exception as e:  # noqa: BLE001 (an import failure of any kind: report it)
        return (f"flash-attn-4 is not importable ({type(e).__name__}: {e}); install it with "
                "`pip install --pre flash-attn-4` (it brings nvidia-cutlass-dsl)")
    return None


def _register() -> Any:
    from torch.nn.attention import _fa4

    return _fa4.register_flash_attention_fa4(module_path=__name__)


def activate_fa4(device: torch.device | str | None = None) -> None:
    """Route SDPA's flash backend to FA4 for this process (idempotent: nothing happens while it is
    the active implementation). Raises ModelConfigError naming what is missing where FA4 cannot
    run; warns when it replaces another implementation someone activated."""
    if fa4_active():
        return
    problem = fa4_problem(device)
    if problem is not None:
        raise ModelConfigError(f"sdpa kernel 'fa4': {problem}")
    from torch.nn import attention

    other = attention.current_flash_attention_impl()
    if other is not None:
        warnings.warn(f"sdpa kernel 'fa4' replaces the flash-attention implementation {other!r} "
                      "activated before it (torch's registry holds one per process)", stacklevel=2)
    attention.register_flash_attention_impl(IMPL_NAME, register_fn=_register)
    attention.activate_flash_attention_impl(IMPL_NAME)
    _activated["ever"] = True


def fa4_active() -> bool:
    """Whether torch's flash backend runs FA4 through this module now (torch's registry says so,
    so a later restore_flash_attention_impl() or another activation shows here)."""
    attention = importlib.import_module("torch.nn.attention")
    current = getattr(attention, "current_flash_attention_impl", None)
    return current is not None and current() == IMPL_NAME


def require_fa4(device: torch.device) -> None:
    """For attention cores with the "fa4" kernel: activate FA4 at the first eager call. Under
    torch.compile it must have been activated before the trace (registering kernels is not
    traceable): checked when the graph is traced, not on every call."""
    if torch.compiler.is_compiling():
        if not _activated["ever"]:
            raise ModelConfigError("sdpa kernel 'fa4': call titan_models.activate_fa4() before torch.compile "
                                   "traces the model (or run it eagerly once)")
        return
    if not fa4_active():
        activate_fa4(device)
