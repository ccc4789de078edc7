"""Tensor (and sequence) parallelism: a plan of torch ParallelStyles applied by module name.

Sequence parallel (norms sharded on the sequence dim) and loss parallel (logits left sharded on the
vocab dim, the loss computed under `torch.distributed.tensor.parallel.loss_parallel()`) are part of
the plan: the model's author builds the plan with or without them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from titan_parallel.errors import ParallelConfigError
from titan_parallel.float8_tp import float8_style, wants_float8_styles
from titan_parallel.modules import match_modules, named_modules_clean

# Attribute names under which models keep head counts (Titan/Meta style and Hugging Face style).
HEAD_ATTRS = ("n_heads", "n_kv_heads", "num_heads", "num_kv_heads", "num_attention_heads",
              "num_key_value_heads", "n_head")


def check_tp_degree(tp_degree: int, **sizes: int) -> None:
    """Raise ParallelConfigError unless `tp_degree` divides every size given by name, e.g.
    check_tp_degree(4, n_heads=32, n_kv_heads=8, ffn_hidden=14336)."""
    for name, size in sizes.items():
        if size is not None and size % tp_degree != 0:
            raise ParallelConfigError(
                f"tensor parallel degree {tp_degree} does not divide {name}={size}: each TP rank must "
                f"hold a whole share; choose a degree that divides {size}"
            )


def resolve_plan(model: nn.Module, plan: Mapping[str, ParallelStyle]) -> list[tuple[str, nn.Module, ParallelStyle]]:
    """(module name, module, style) for every module each pattern matches, in plan order. A
    pattern that matches nothing, or a module matched by two patterns, is an error."""
    if not isinstance(plan, Mapping) or not plan:
        raise ParallelConfigError("plan must be a non-empty dict of module name (with '*') -> ParallelStyle")
    owner: dict[str, str] = {}
    out: list[tuple[str, nn.Module, ParallelStyle]] = []
    for pattern, style in plan.items():
        if not isinstance(style, ParallelStyle):
            raise ParallelConfigError(
                f"plan[{pattern!r}] must be a torch ParallelStyle (ColwiseParallel(), ...), got {style!r}"
            )
        matches = [("", model)] if pattern == "" else match_modules(model, pattern, arg=f"plan[{pattern!r}]")
        for name, module in matches:
            if name in owner:
                raise ParallelConfigError(
                    f"plan: module {name!r} is matched by both {owner[name]!r} and {pattern!r}; "
                    "give each module one style"
                )
            owner[name] = pattern
            out.append((name, module, style))
    return out


def check_tp_sizes(model: nn.Module, resolved: list[tuple[str, nn.Module, ParallelStyle]],
                   tp_degree: int) -> None:
    """Sharded dims of colwise/rowwise Linear and Embedding layers, and any head counts found on
    the modules being sharded or their parents, must divide by the TP degree."""
    modules = named_modules_clean(model)
    seen: set[int] = set()
    for name, module, style in resolved:
        for size_name, size in _sharded_sizes(module, style):
            check_tp_degree(tp_degree, **{f"{name}.{size_name}": size})
        parts = name.split(".") if name else []
        for i in range(len(parts), -1, -1):  # the module and its ancestors
            owner = modules.get(".".join(parts[:i]))
            if owner is None or id(owner) in seen:
                continue
            seen.add(id(owner))
            for source in (owner, getattr(owner, "config", None)):
                for attr in HEAD_ATTRS:
                    value = getattr(source, attr, None)
                    if isinstance(value, int) and not isinstance(value, bool):
                        where = ".".join(parts[:i]) or type(model).__name__
                        check_tp_degree(tp_degree, **{f"{where}.{attr}": value})


def _sharded_sizes(module: nn.Module, style: ParallelStyle) -> list[tuple[str, int]]:
    if isinstance(style, ColwiseParallel):
        if isinstance(module, nn.Linear):
            return [("out_features", module.out_features)]
        if isinstance(module, nn.Embedding):
            return [("embedding_dim", module.embedding_dim)]
    if isinstance(style, RowwiseParallel):
        if isinstance(module, nn.Linear):
            return [("in_features", module.in_features)]
        if isinstance(module, nn.Embedding):
            return [("num_embeddings", module.num_embeddings)]
    return []


def apply_tp(
    model: nn.Module,
    mesh: DeviceMesh,
    plan: Mapping[str, ParallelStyle],
    *,
    async_tp: bool = False,
    float8_collectives: bool | None = None,
) -> nn.Module:
    """Apply `plan` (module name pattern -> torch ParallelStyle, '*' = one name segment, '' = the
    root) over the 1-D TP `mesh`. Checked before anything is sharded: every pattern matches a
    module, and the TP degree divides every sharded Linear/Embedding dim and every head count
    (n_heads, n_kv_heads, num_key_value_heads, ...) on the way.

    async_tp: overlap TP collectives with the matmuls through torch's symmetric memory; needs CUDA
    and compiled blocks (apply_compile), and raises ParallelConfigError on other devices.
    float8_collectives: on linears converted to tensorwise float8 (apply_float8), use torchao's
    float8 styles, so sequence-parallel all-gathers move float8 (see titan_parallel.float8_tp);
    None (default): on CUDA meshes only (gloo has no float8 dtype); False: the plan's styles as given.
    Apply after float8 conversion and before activation checkpointing, compile and FSDP.
    """
    if not isinstance(mesh, DeviceMesh) or mesh.ndim != 1:
        raise ParallelConfigError(
            f"mesh must be a 1-D DeviceMesh (the TP dim, e.g. mesh['tp']), got {mesh!r}"
        )
    resolved = resolve_plan(model, plan)
    check_tp_sizes(model, resolved, mesh.size())
    if async_tp:
        _enable_async_tp(model, mesh)
    if wants_float8_styles(mesh, float8_collectives) and any(
            type(m).__name__ == "Float8Linear" for m in model.modules()):
        resolved = [(name, module, float8_style(style, module)) for name, module, style in resolved]
    for _, module, style in resolved:
        parallelize_module(module, mesh, style)
    return model


def _enable_async_tp(model: nn.Module, mesh: DeviceMesh) -> None:
    if mesh.device_type != "cuda" or not torch.cuda.is_available():
        raise ParallelConfigError(
            f"async_tp=True needs CUDA GPUs (torch's symmetric memory) and compiled blocks; this TP "
            f"mesh is on {mesh.device_type!r}. Set async_tp=False here"
        )
    import torch._inductor.config as inductor_config
    from torch.distributed._symmetric_memory import enable_symm_mem_for_group

    inductor_config._micro_pipeline_tp = True
    enable_symm_mem_for_group(mesh.get_group().group_name)

    def warn_if_eager(module: nn.Module, args: object) -> None:
        # Micro-pipelining is an inductor pass: without compile nothing overlaps.
        if torch.compiler.is_compiling():
            return  # the whole model is compiled; nothing to say
        if not any(type(m).__name__ == "OptimizedModule" for m in module.modules()):
            warnings.warn("async_tp=True has no effect: no part of the model is compiled "
                          "(use apply_compile)", stacklevel=2)
        handle.remove()

    handle = model.register_forward_pre_hook(warn_if_eager)
