"""Model on meta -> float8 -> pipeline split -> TP, AC, compile, FSDP/DDP per part -> init.

Only this file turns the config into titan-parallel calls; each call gets plain arguments.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import titan_parallel as tp_lib
import torch
from titan_mesh import ParallelDims
from torch import nn

from titan_train.config import JobConfig, uses_float8
from titan_train.errors import ConfigError


@dataclass
class BuiltModel:
    parts: list[nn.Module]          # one per local pipeline stage (one part without PP)
    stages: list | None             # pipeline stages, or None
    has_first: bool
    has_last: bool


def _module_exists(model: nn.Module, pattern: str) -> bool:
    names = [n for n, _ in model.named_modules()]
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def _tp_plan_for(spec, part: nn.Module, *, loss_parallel: bool) -> dict:
    plan = spec.tp_plan(part, sequence_parallel=True, loss_parallel=loss_parallel)
    # A pipeline stage lacks some modules (embedding, output): keep the entries it has.
    return {k: v for k, v in plan.items() if _module_exists(part, k)}


def module_order(model: nn.Module, blocks: str = "layers") -> list[str]:
    """Top-level modules in forward order, with each block named `layers.N`."""
    order = []
    for name, child in model.named_children():
        if name == blocks:
            order += [f"{blocks}.{k}" for k in child.keys()] if isinstance(child, nn.ModuleDict) else \
                     [f"{blocks}.{i}" for i in range(len(child))]
        else:
            order.append(name)
    return order


def _dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def uses_fsdp(dims: ParallelDims, device: torch.device, cfg: JobConfig) -> bool:
    """FSDP when sharding over ranks, and on a single GPU for bf16 mixed precision."""
    if dims.dp_shard * dims.cp > 1:
        return True
    single_gpu_mp = (device.type == "cuda" and dims.world_size == 1
                     and cfg.training.mixed_precision_param != "float32")
    return single_gpu_mp


def mixed_precision_mode(dims: ParallelDims, device: torch.device, cfg: JobConfig) -> str:
    """How training.mixed_precision_param is honoured: "fsdp" (FSDP casts parameters), "autocast"
    (DDP or one device without FSDP, as torch.autocast), "off" (float32 asked, or CPU), or
    "unsupported" (TP or PP without FSDP: no bf16 path that keeps DTensors exact; float32)."""
    if device.type != "cuda" or cfg.training.mixed_precision_param == "float32":
        return "off"
    if uses_fsdp(dims, device, cfg):
        return "fsdp"
    if dims.tp > 1 or dims.pp > 1:
        return "unsupported"
    return "autocast"


def parallelize_part(part: nn.Module, spec, cfg: JobConfig, dims: ParallelDims, device: torch.device,
                     *, pipelined: bool) -> nn.Module:
    p, ac, comp = cfg.parallelism, cfg.activation_checkpoint, cfg.compile
    if dims.tp > 1:
        loss_parallel = not p.disable_loss_parallel and not pipelined
        tp_lib.apply_tp(part, dims.get_mesh("tp"), _tp_plan_for(spec, part, loss_parallel=loss_parallel),
                        async_tp=p.enable_async_tensor_parallel)
    from titan_train.trainer.pipeline import apply_cp

    apply_cp(part, cfg, dims)
    if ac.mode != "none":
        if ac.mode == "selective" and ac.selective_ac_option != "op":
            tp_lib.apply_ac(part, mode="selective", layer_freq=int(ac.selective_ac_option))
        else:
            tp_lib.apply_ac(part, mode=ac.mode)
    if comp.enable and "model" in comp.components:
        tp_lib.apply_compile(part, backend=comp.backend)
    on_gpu = device.type == "cuda"
    if uses_fsdp(dims, device, cfg):
        param_dtype = _dtype(cfg.training.mixed_precision_param) if on_gpu else torch.float32
        reduce_dtype = _dtype(cfg.training.mixed_precision_reduce) if on_gpu else torch.float32
        # under PP several microbatches reuse the gathered params: keep them ("default" there = never)
        reshard = {"default": False if pipelined else "default", "always": True,
                   "never": False}[p.fsdp_reshard_after_forward]
        mesh = dims.fsdp_mesh() if dims.world_size > 1 else dims.get_mesh("world")
        tp_lib.apply_fsdp(part, mesh, param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                          reshard_after_forward=reshard, cpu_offload=cfg.training.enable_cpu_offload)
    elif dims.dp_replicate > 1:
        tp_lib.apply_ddp(part, dims.get_mesh("dp_replicate"))
    return part


def float8_skip(cfg: JobConfig, spec) -> tuple[str, ...]:
    """Linears kept in high precision: the config's filter_fqns plus what the model family needs
    (ModelSpec.float8_skip, e.g. a router), each once."""
    return tuple(dict.fromkeys([*cfg.float8.filter_fqns, *spec.float8_skip]))


def apply_converters(model: nn.Module, cfg: JobConfig, spec) -> None:
    if not uses_float8(cfg):
        return
    f8 = cfg.float8
    if not f8.emulate and not torch.cuda.is_available():  # the library's message names its argument, not our key
        raise ConfigError("model.converters includes quantize.linear.float8, which needs a float8-capable CUDA "
                          "GPU (e.g. H100) and none is visible; add --quantize.linear.float8.emulate to test "
                          "the conversion on CPU (slow, for checks only)")
    skip = float8_skip(cfg, spec)
    tp_lib.apply_float8(model, recipe=f8.recipe_name or "tensorwise",
                        skip=tuple(s for s in skip if s != "auto_filter_small_kn"),
                        skip_small="auto_filter_small_kn" in skip,
                        fsdp_float8_all_gather=f8.enable_fsdp_float8_all_gather,
                        precompute_scale=f8.precompute_float8_dynamic_scale_for_fsdp, emulate=f8.emulate)
