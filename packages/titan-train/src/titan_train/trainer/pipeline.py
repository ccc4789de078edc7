"""Pipeline and context parallel, from the config to titan-parallel's functions."""

from __future__ import annotations

from collections.abc import Callable

import torch
from titan_mesh import ParallelDims
from titan_parallel import context as cp_lib
from titan_parallel import pipeline as pp_lib
from torch import nn

from titan_train.config import JobConfig


def split(cfg: JobConfig, dims: ParallelDims, model: nn.Module, spec):
    """This rank's stages of the meta model: (PipelineParts, list of stage modules)."""
    p = cfg.parallelism
    order = pp_lib.module_order_of(model, spec.blocks)
    split_points = p.module_fqns_per_model_part
    if split_points is None and p.pipeline_parallel_split_points:
        split_points = _from_split_points(order, p.pipeline_parallel_split_points)
    if p.pipeline_parallel_layers_per_stage is not None:
        if split_points is not None:
            from titan_train.errors import ConfigError

            raise ConfigError("parallelism.pipeline_parallel_layers_per_stage and explicit stage boundaries "
                              "(pipeline_parallel_split_points / module_fqns_per_model_part) both given: use one")
        split_points = layers_per_stage_split(order, p.pipeline_parallel_layers_per_stage, dims.pp)
    parts = pp_lib.pipeline_split(model, dims.get_mesh("pp"), module_order=order,
                                  schedule=p.pipeline_parallel_schedule, split_points=split_points)
    check_cuts(parts.plan, spec.pipeline_split_points(model.args) if hasattr(model, "args") else None)
    return parts, list(parts.modules)


def check_cuts(stages: list[list[str]], allowed: list[str] | None) -> None:
    """Every stage after the first must begin at a block the model family allows a cut before
    (ModelSpec.pipeline_split_points); None: the family does not restrict them."""
    if allowed is None:
        return
    bad = [s[0] for s in stages[1:] if s[0] not in set(allowed)]
    if bad:
        from titan_train.errors import ConfigError

        raise ConfigError(f"pipeline stages would begin at {bad}, where this model cannot be cut; stages may begin "
                          f"at {allowed[0]} .. {allowed[-1]} ({len(allowed)} places): change "
                          "parallelism.pipeline_parallel_split_points / module_fqns_per_model_part / layers_per_stage")


def layers_per_stage_split(order: list[str], per: int, pp: int) -> list[list[str]]:
    """Stages of `per` blocks each (the last may hold fewer), the embedding with the first and the
    final norm / output with the last; their number must be a multiple of the pp degree."""
    from titan_train.errors import ConfigError

    if per < 1:
        raise ConfigError(f"parallelism.pipeline_parallel_layers_per_stage = {per} must be >= 1")
    blocks = [m for m in order if pp_lib.split.is_block(m)]
    first = blocks[0] if blocks else None
    head = order[:order.index(first)] if first else []
    tail = order[order.index(blocks[-1]) + 1:] if blocks else []
    stages = [blocks[i:i + per] for i in range(0, len(blocks), per)]
    if len(stages) % pp:
        raise ConfigError(f"parallelism.pipeline_parallel_layers_per_stage = {per} cuts {len(blocks)} layers into "
                          f"{len(stages)} stages, which the pipeline degree {pp} does not divide; choose a value "
                          f"giving a multiple of {pp} stages (e.g. {max(1, len(blocks) // pp)})")
    stages[0] = head + stages[0]
    stages[-1] = stages[-1] + tail
    return stages


def _from_split_points(order: list[str], points: list[str]) -> list[list[str]]:
    """torchtitan's split points ("layers.4" starts a new stage) -> module names per stage."""
    from titan_train.errors import ConfigError

    stages, current = [], []
    cuts = set(points)
    for name in order:
        if name in cuts and current:
            stages.append(current)
            current = []
        current.append(name)
    stages.append(current)
    missing = cuts - set(order)
    if missing:
        raise ConfigError(f"parallelism.pipeline_parallel_split_points: {sorted(missing)} are not modules of "
                          f"the model (e.g. {order[1]}, {order[len(order) // 2]})")
    return stages


class Pipeline:
    """Runs the schedule on one micro-batch group; returns the loss share held by this rank."""

    def __init__(self, cfg: JobConfig, dims: ParallelDims, parts, modules: list[nn.Module],
                 loss_fn: Callable, device: torch.device, accum_steps: int) -> None:
        parts.modules = modules
        self.device = device

        def loss(out, target):
            # the schedule divides by the microbatch count; accumulation divides by its steps
            return loss_fn(out, target) / accum_steps

        self.pipe = pp_lib.build_pipeline_schedule(
            parts, dims.get_mesh("pp"), loss_fn=loss, microbatch_size=cfg.parallelism.pipeline_parallel_microbatch_size,
            local_batch_size=cfg.training.local_batch_size, device=device)

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, *, accum_steps: int) -> torch.Tensor:  # noqa: ARG002
        loss = pp_lib.pipeline_step(self.pipe, inputs, labels)
        return loss if loss is not None else torch.zeros((), device=self.device)


def build_pipeline(cfg: JobConfig, dims: ParallelDims, parts, modules, loss_fn, device, accum_steps: int):
    return Pipeline(cfg, dims, parts, modules, loss_fn, device, accum_steps)


def validate_cp(cfg: JobConfig, dims: ParallelDims, args) -> None:
    from titan_parallel import ParallelConfigError

    from titan_train.errors import ConfigError

    p = cfg.parallelism
    try:
        cp_lib.validate_cp(cp_degree=dims.cp, seq_len=cfg.training.seq_len, method=p.context_parallel_method,
                           rotate=p.context_parallel_rotate_method, n_heads=args.n_heads, tp_degree=dims.tp)
    except ParallelConfigError as e:
        raise ConfigError(f"parallelism.context_parallel_degree = {dims.cp} with context_parallel_method = "
                          f"{p.context_parallel_method!r}, tensor_parallel_degree = {dims.tp} and training.seq_len = "
                          f"{cfg.training.seq_len}: {e}") from None


def cp_context(cfg: JobConfig, dims: ParallelDims, parts: list[nn.Module], batch: list[torch.Tensor]):
    """Shard inputs, labels and the RoPE tables along the sequence for this step's forward/backward."""
    buffers = list(batch) + [m.freqs_cis for m in parts if getattr(m, "freqs_cis", None) is not None]
    seq_dims = [1] * len(batch) + [0] * (len(buffers) - len(batch))
    p = cfg.parallelism
    return cp_lib.context_parallel_ctx(dims.get_mesh("cp"), buffers=buffers, seq_dims=seq_dims,
                                       no_restore_buffers=list(batch), method=p.context_parallel_method,
                                       rotate=p.context_parallel_rotate_method)


def apply_cp(part: nn.Module, cfg: JobConfig, dims: ParallelDims) -> None:
    """Ulysses swaps the attention cores' behaviour once; ring attention needs nothing up front."""
    if dims.cp > 1 and cfg.parallelism.context_parallel_method == "ulysses":
        cp_lib.apply_ulysses(part, dims.get_mesh("cp"))
