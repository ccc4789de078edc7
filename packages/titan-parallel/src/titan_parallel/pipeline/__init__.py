"""Pipeline parallel over torch.distributed.pipelining: stage split, every schedule by name, a step."""

from titan_parallel.pipeline.build import (
    PipelineParts,
    PipelineSchedule,
    build_pipeline_schedule,
    pipeline_split,
    pipeline_step,
)
from titan_parallel.pipeline.schedules import (
    SCHEDULES,
    ScheduleSpec,
    resolve_microbatches,
    resolve_schedule,
    validate_pipeline,
)
from titan_parallel.pipeline.split import (
    PassThrough,
    build_stage_module,
    module_order_of,
    plan_stages,
    stage_ids_for_rank,
)

__all__ = [
    "SCHEDULES",
    "PassThrough",
    "PipelineParts",
    "PipelineSchedule",
    "ScheduleSpec",
    "build_pipeline_schedule",
    "build_stage_module",
    "module_order_of",
    "pipeline_split",
    "pipeline_step",
    "plan_stages",
    "resolve_microbatches",
    "resolve_schedule",
    "stage_ids_for_rank",
    "validate_pipeline",
]
