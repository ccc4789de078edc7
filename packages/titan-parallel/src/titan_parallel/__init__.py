"""titan-parallel: FSDP2/HSDP/DDP, tensor + sequence parallel (async TP), activation checkpointing,
per-block compile and Float8 for any nn.Module, plus gradient clipping across meshes.

Documented order (what `parallelize` does): float8 -> TP -> EP -> Ulysses -> AC -> compile ->
FSDP/DDP (experts first, on their own mesh; in one process: apply_mixed_precision), then `init_weights`, then the optimizer.
"""

from titan_parallel.activation_checkpoint import AC_MODES, DEFAULT_SAVE_OPS, OpPolicy, apply_ac
from titan_parallel.clip import clip_grad_norm_, get_total_norm
from titan_parallel.compile import apply_compile
from titan_parallel.data_parallel import apply_ddp, apply_fsdp
from titan_parallel.errors import ParallelConfigError
from titan_parallel.expert_parallel import apply_ep, apply_expert_fsdp
from titan_parallel.float8 import apply_float8, float8_linear_names, precompute_float8_scales
from titan_parallel.init import init_context, init_weights
from titan_parallel.master_adamw import MasterAdamW
from titan_parallel.master_weights import compute_copies
from titan_parallel.mixed_precision import apply_mixed_precision
from titan_parallel.modules import find_repeated_blocks, resolve_units
from titan_parallel.parallelize import (
    ACOptions,
    CompileOptions,
    Float8Options,
    FSDPOptions,
    parallelize,
)
from titan_parallel.tensor_parallel import apply_tp, check_tp_degree

__version__ = "0.1.0"

__all__ = [
    "AC_MODES",
    "DEFAULT_SAVE_OPS",
    "ACOptions",
    "CompileOptions",
    "FSDPOptions",
    "Float8Options",
    "MasterAdamW",
    "OpPolicy",
    "ParallelConfigError",
    "apply_ac",
    "apply_compile",
    "apply_ddp",
    "apply_ep",
    "apply_expert_fsdp",
    "apply_float8",
    "apply_fsdp",
    "apply_mixed_precision",
    "apply_tp",
    "check_tp_degree",
    "clip_grad_norm_",
    "compute_copies",
    "find_repeated_blocks",
    "float8_linear_names",
    "get_total_norm",
    "init_context",
    "init_weights",
    "parallelize",
    "precompute_float8_scales",
    "resolve_units",
]

# --- pipeline / context parallel ---
from titan_parallel.context import apply_ulysses, context_parallel_ctx, validate_cp  # noqa: E402
from titan_parallel.pipeline import (  # noqa: E402
    PipelineParts,
    PipelineSchedule,
    build_pipeline_schedule,
    module_order_of,
    pipeline_split,
    pipeline_step,
    validate_pipeline,
)

__all__ += [
    "PipelineParts",
    "PipelineSchedule",
    "apply_ulysses",
    "build_pipeline_schedule",
    "context_parallel_ctx",
    "module_order_of",
    "pipeline_split",
    "pipeline_step",
    "validate_cp",
    "validate_pipeline",
]
# --- end pipeline / context parallel ---
