"""Layout-independent parameter initialization: each parameter's values are a function of the
global seed and its name only.

Why: after meta-device construction the model is sharded (FSDP, TP) or split into pipeline
stages before any memory holds weights. If every rank drew from one shared random stream, values
would depend on parameter order, on which parameters a stage has and on shard shapes. Instead
each parameter gets its own generator seeded from sha256(seed, name), fills a tensor of the
parameter's full (global) shape on the parameter's device and copies it in; DTensor parameters,
under implicit replication, keep their own shard of that full tensor. So a model initializes to
the same numbers whatever layout it has, on the same device type (CPU and CUDA generators differ).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

# Wrappers that insert a level into parameter names: activation checkpointing, torch.compile,
# FSDP1. Their segments are dropped so a wrapped model initializes like an unwrapped one.
WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")


def canonical_name(fqn: str) -> str:
    """The parameter name with wrapper segments removed."""
    return ".".join(part for part in fqn.split(".") if part not in WRAPPER_SEGMENTS)


def stable_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, name), the same in every process (unlike Python's hash())."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def fill_by_name(param: torch.Tensor, name: str, seed: int,
                 fill: Callable[[torch.Tensor, torch.Generator], None]) -> None:
    """Fill a full-shape tensor with `fill(tensor, generator)` and copy it into `param`."""
    if param.device.type == "meta":
        raise RuntimeError(
            f"{name} is on the meta device: call model.to_empty(device=...) before init_weights()")
    full = torch.empty(param.shape, dtype=param.dtype, device=param.device)
    generator = torch.Generator(device=full.device)
    generator.manual_seed(stable_seed(seed, name))
    fill(full, generator)
    with torch.no_grad():
        param.copy_(full)


def trunc_normal(std: float, cutoff: float = 3.0) -> Callable[[torch.Tensor, torch.Generator], None]:
    """Normal(0, std) truncated at +-cutoff * std."""

    def fill(t: torch.Tensor, g: torch.Generator) -> None:
        torch.nn.init.trunc_normal_(t, std=std, a=-cutoff * std, b=cutoff * std, generator=g)

    return fill


def normal(std: float) -> Callable[[torch.Tensor, torch.Generator], None]:
    def fill(t: torch.Tensor, g: torch.Generator) -> None:
        torch.nn.init.normal_(t, std=std, generator=g)

    return fill


def ones(t: torch.Tensor, g: torch.Generator) -> None:
    t.fill_(1.0)


def zeros(t: torch.Tensor, g: torch.Generator) -> None:
    t.zero_()
