"""Split a model into this rank's pipeline stages, build a schedule over them, run a step.

Order of use (the trainer's):
    parts = pipeline_split(meta_model, pp_mesh, module_order=..., schedule="1F1B")
    for module in parts.modules: apply TP / AC / compile / FSDP; to_empty(); init_weights()
    pipe = build_pipeline_schedule(parts, pp_mesh, loss_fn=..., microbatch_size=..., local_batch_size=...)
    loss = pipe.step(inputs, labels)   # the mean loss on the rank holding the last stage, else None
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from titan_parallel.errors import ParallelConfigError, closest
from titan_parallel.pipeline.schedules import resolve_schedule, schedule_class, validate_pipeline
from titan_parallel.pipeline.split import (
    build_stage_module,
    is_block,
    plan_stages,
    stage_ids_for_rank,
)


@dataclass
class PipelineParts:
    """This rank's share of a pipeline: stage indices and their modules, in the same order.

    Iterating yields (stage_index, module) pairs. Replace entries of `modules` if a parallelizing
    function returns a new module object; build_pipeline_schedule reads them then.
    """

    schedule: str
    stage_ids: list[int]
    modules: list[nn.Module]
    num_stages: int
    pp_rank: int
    pp_degree: int
    plan: list[list[str]] = field(repr=False)  # module names of every stage, stage order

    def __iter__(self) -> Iterator[tuple[int, nn.Module]]:
        return iter(zip(self.stage_ids, self.modules))

    def __len__(self) -> int:
        return len(self.modules)

    @property
    def is_first(self) -> bool:
        """This rank holds stage 0, so it feeds the inputs."""
        return 0 in self.stage_ids

    @property
    def is_last(self) -> bool:
        """This rank holds the last stage, so it computes the loss."""
        return self.num_stages - 1 in self.stage_ids


def pipeline_split(model: nn.Module, pp_mesh: DeviceMesh, *, module_order: Sequence[str],
                   schedule: str = "1F1B", stages_per_rank: int | None = None,
                   split_points: Sequence[Sequence[str]] | None = None, input_weight: float = 1,
                   output_weight: float = 1) -> PipelineParts:
    """This pipeline rank's stage modules, each a copy of `model` without the other stages' modules.

    model: the whole model, ideally on the meta device (copies then cost nothing).
    pp_mesh: the 1-D pipeline mesh (its size is the pp degree).
    module_order: forward order of the modules to place, e.g. ["tok_embeddings", "layers.0", ...,
        "layers.N-1", "norm", "output"] (module_order_of(model) builds it).
    schedule: a name from SCHEDULES; decides stage placement (looped, or V-shaped for
        ZBVZeroBubble and DualPipeV) and the allowed stages_per_rank.
    stages_per_rank: virtual stages per rank (default: 1 for GPipe/1F1B/InterleavedZeroBubble,
        2 for the others; with split_points, len(split_points) / pp degree).
    split_points: explicit module names per stage instead of balancing.
    input_weight / output_weight: layer-equivalents counted for the modules before the first block
        (embedding) and after the last (norm + output) when balancing.
    """
    name, spec = resolve_schedule(schedule)
    pp = pp_mesh.size()
    if stages_per_rank is None:
        if split_points is not None:
            if len(split_points) % pp:
                raise ParallelConfigError(
                    f"split_points lists {len(split_points)} stages, not a multiple of the pp degree {pp}"
                )
            stages_per_rank = len(split_points) // pp
        else:
            stages_per_rank = 1 if spec.min_stages_per_rank == 1 else 2
    known = {n for n, _ in model.named_modules() if n}
    for m in module_order:
        if m not in known:
            raise ParallelConfigError(
                f"module_order names {m!r}, which the model does not have{closest(m, known)}"
            )
    num_blocks = None if split_points is not None else sum(is_block(m) for m in module_order)
    validate_pipeline(name, pp_degree=pp, stages_per_rank=stages_per_rank, num_blocks=num_blocks)
    num_stages = pp * stages_per_rank
    plan = plan_stages(module_order, num_stages, input_weight=input_weight,
                       output_weight=output_weight, split_points=split_points)
    rank = pp_mesh.get_local_rank()
    ids = stage_ids_for_rank(rank, pp, stages_per_rank, spec.placement)
    modules = [build_stage_module(model, module_order, plan[i]) for i in ids]
    return PipelineParts(name, ids, modules, num_stages, rank, pp, plan)


@dataclass
class PipelineSchedule:
    """A torch pipeline schedule over this rank's stages, with the facts a training step needs."""

    schedule: Any  # a torch.distributed.pipelining schedule object
    stages: list[Any]  # its PipelineStage objects
    parts: PipelineParts
    n_microbatches: int

    @property
    def is_first(self) -> bool:
        return self.parts.is_first

    @property
    def is_last(self) -> bool:
        return self.parts.is_last

    def step(self, inputs: torch.Tensor | None, labels: torch.Tensor | None, *,
             train: bool = True, **model_kwargs: Any) -> torch.Tensor | None:
        """One forward (and backward, when train) over the whole local batch; see pipeline_step."""
        args = (inputs,) if self.is_first else ()
        kwargs = model_kwargs if self.is_first else {}
        losses: list[torch.Tensor] = []
        target = labels if self.is_last else None
        if self.is_first and inputs is None:
            raise ParallelConfigError("this rank holds the first pipeline stage: pass the inputs")
        if self.is_last and labels is None:
            raise ParallelConfigError("this rank holds the last pipeline stage: pass the labels")
        if train:
            self.schedule.step(*args, target=target, losses=losses, return_outputs=False, **kwargs)
        else:
            with torch.no_grad():
                self.schedule.eval(*args, target=target, losses=losses, **kwargs)
        if not self.is_last:
            return None
        # Each microbatch loss was divided by the microbatch count, so their sum is the mean.
        return torch.stack([loss.detach() for loss in losses]).sum()


# torch's names for the extra forward a stage runs on its first step to learn its tensors' shapes
# (2.13: _forward_metadata_inference; earlier: _shape_inference).
_INFERENCE_METHODS = ("_forward_metadata_inference", "_shape_inference")


def _keep_buffers_through_inference(stage: Any) -> None:
    """That shape-inference forward runs the stage's module on real or uninitialized tensors: it
    must not change the module's state (running statistics, a mixture of experts' token counts,
    which would then differ from one process). Buffers are copied before and restored after."""
    for name in _INFERENCE_METHODS:
        method = getattr(stage, name, None)
        if method is None:
            continue

        def guarded(*args, _method=method, **kwargs):
            saved = [(b, b.detach().clone()) for b in stage.submod.buffers()]
            try:
                return _method(*args, **kwargs)
            finally:
                with torch.no_grad():
                    for buf, value in saved:  # only what changed: a copy bumps autograd versions
                        if not torch.equal(buf, value):
                            buf.copy_(value)

        setattr(stage, name, guarded)
        return


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_pipeline_schedule(parts: PipelineParts, pp_mesh: DeviceMesh, *,
                            loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
                            n_microbatches: int | None = None, microbatch_size: int | None = None,
                            local_batch_size: int | None = None,
                            device: torch.device | str | None = None) -> PipelineSchedule:
    """Wrap each stage module in a torch PipelineStage and build the schedule named in `parts`.

    Microbatches: n_microbatches, or local_batch_size / microbatch_size (must divide). loss_fn
    returns the mean loss of one microbatch; it is divided by the microbatch count so that the
    summed microbatch losses, and the accumulated gradients, equal those of the whole local batch
    without pipelining (torch's own scale_grads is off: it would also rescale gradients
    accumulated before the step).
    """
    from torch.distributed.pipelining import PipelineStage

    name, spec = resolve_schedule(parts.schedule)
    n_mb = validate_pipeline(name, pp_degree=parts.pp_degree, stages_per_rank=len(parts),
                             n_microbatches=n_microbatches, local_batch_size=local_batch_size,
                             microbatch_size=microbatch_size)
    if n_mb == 0:
        raise ParallelConfigError(
            "give n_microbatches, or both local_batch_size and microbatch_size, to build a pipeline schedule"
        )
    device = torch.device(device) if device is not None else _default_device()
    group = pp_mesh.get_group()
    stages = [PipelineStage(module, stage_index=i, num_stages=parts.num_stages, device=device, group=group)
              for i, module in parts]
    for stage in stages:
        _keep_buffers_through_inference(stage)

    def scaled_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(output, target) / n_mb

    cls = schedule_class(name)
    first = stages if spec.multi_stage else stages[0]
    schedule = cls(first, n_microbatches=n_mb, loss_fn=scaled_loss, scale_grads=False)
    return PipelineSchedule(schedule, stages, parts, n_mb)


def pipeline_step(pipe: PipelineSchedule, inputs: torch.Tensor | None, labels: torch.Tensor | None,
                  *, train: bool = True, **model_kwargs: Any) -> torch.Tensor | None:
    """Run one pipelined step; return the local batch's mean loss on the rank holding the last
    stage (a detached scalar), None elsewhere. Gradients are left in the stage parameters.

    inputs are used only where the first stage lives, labels only where the last one does; other
    ranks may pass None. train=False runs forward only (evaluation) under no_grad.
    """
    return pipe.step(inputs, labels, train=train, **model_kwargs)
