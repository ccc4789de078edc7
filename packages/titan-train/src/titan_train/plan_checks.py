"""The layout checks make_plan runs before any work starts: options a layout would silently ignore
or compute differently are refused here, naming the config keys (split from plan.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from titan_mesh import ParallelDims

from titan_train.config import JobConfig, uses_float8
from titan_train.errors import ConfigError

if TYPE_CHECKING:
    from titan_train.plan import BatchPlan, ParallelPlan, Precision


def fsdp_only(cfg: JobConfig) -> list[str]:
    """The set options that only FSDP carries out (config keys, with their values)."""
    f8, t = cfg.float8, cfg.training
    float8 = uses_float8(cfg)
    return [k for k, on in (("training.enable_cpu_offload", t.enable_cpu_offload),
                            (f"training.mixed_precision_reduce = {t.mixed_precision_reduce!r}",
                             t.mixed_precision_reduce != "float32"),
                            ("quantize.linear.float8.enable_fsdp_float8_all_gather",
                             float8 and f8.enable_fsdp_float8_all_gather),
                            ("quantize.linear.float8.precompute_float8_dynamic_scale_for_fsdp",
                             float8 and f8.precompute_float8_dynamic_scale_for_fsdp)) if on]


def check_fsdp_options(cfg: JobConfig, parallel: ParallelPlan) -> None:
    """Options that only FSDP carries out, refused when this layout has no FSDP."""
    if parallel.dp == "fsdp":
        return
    asked = fsdp_only(cfg)
    reshard = cfg.parallelism.fsdp_reshard_after_forward
    if reshard != "default" and parallel.cast_dtype is None:  # the one-GPU casts honour it too
        asked.append(f"parallelism.fsdp_reshard_after_forward = {reshard!r}")
    if cfg.parallelism.single_gpu_fsdp:
        asked.append("parallelism.single_gpu_fsdp")
    if asked:
        raise ConfigError(f"{', '.join(asked)} needs FSDP, which this layout does not use (FSDP shards over "
                          "parallelism.data_parallel_shard_degree x context_parallel_degree > 1, or holds the "
                          "bf16 copy on one GPU); turn it off or shard the model")


def check_ring(cfg: JobConfig, dims: ParallelDims, device_type: str) -> None:
    """Ring attention (torch's context_parallel) replaces scaled_dot_product_attention and nothing
    else: combinations it would silently compute otherwise are refused."""
    key = f"parallelism.context_parallel_degree = {dims.cp} with context_parallel_method = 'ring'"
    if cfg.model.attn_backend != "sdpa":
        raise ConfigError(f"{key} and model.attn_backend = {cfg.model.attn_backend!r}: torch's ring attention "
                          "patches SDPA only, so this attention would attend within each rank's shard of the "
                          "sequence. Use attn_backend = 'sdpa', or context_parallel_method = 'ulysses' (any kernel)")
    if dims.pp > 1:
        raise ConfigError(f"{key} and parallelism.pipeline_parallel_degree = {dims.pp}: not proven on GPUs yet, so "
                          "refused; context_parallel_method = 'ulysses' combines with pipeline parallel (tested)")
    if device_type != "cuda":
        raise ConfigError(f"{key} needs GPUs (torch's ring attention does not run on CPU); 'ulysses' runs anywhere")


def check_fused_casts(cfg: JobConfig, precision: Precision, batch: BatchPlan) -> None:
    """optimizer.fused_casts changes how the one-GPU casts and AdamW work together: nothing else."""
    if not cfg.optimizer.fused_casts:
        return
    key = "optimizer.fused_casts = true"
    if precision.mode != "cast":
        path = {"off": "trains in float32 (the CPU, or mixed_precision_param = 'float32')", "fsdp": "uses FSDP's casts",
                "autocast": "uses DDP's autocast", "unsupported": "trains in float32 (TP / PP without FSDP)"}
        raise ConfigError(f"{key} needs the one-GPU bf16 casts (one CUDA process, training.mixed_precision_param "
                          f"= 'bfloat16', no FSDP or parallelism.single_gpu_fsdp); this run "
                          f"{path.get(precision.mode, precision.mode)}: turn it off")
    if cfg.optimizer.name != "AdamW":
        raise ConfigError(f"{key} with optimizer.name = {cfg.optimizer.name!r}: it fuses AdamW only; use AdamW "
                          "or turn it off")
    if batch.accum_steps > 1:
        raise ConfigError(f"{key} with {batch.accum_steps} micro-batches per step (training.global_batch_size): "
                          "gradients would add up in bf16; use one micro-batch or turn it off")


def check_fa4(cfg: JobConfig, dims: ParallelDims, device_type: str) -> None:
    """model.sdpa_kernels 'fa4': refused, naming what is missing, where FlashAttention-4 cannot run
    or has not been checked (context parallel calls the flash kernel per ring step)."""
    if "fa4" not in cfg.model.sdpa_kernels:
        return
    key = f"model.sdpa_kernels = {list(cfg.model.sdpa_kernels)}"
    why = [w for w, on in (
        (f"with model.attn_backend = {cfg.model.attn_backend!r}: 'fa4' is an SDPA kernel; use attn_backend = "
         "'sdpa' or drop 'fa4'", cfg.model.attn_backend != "sdpa"),
        ("with model.attn_mask = 'block_causal': SDPA takes a dense mask there, which the flash kernel does not; "
         "use attn_mask = 'causal' or drop 'fa4'", cfg.model.attn_mask == "block_causal"),
        (f"with parallelism.context_parallel_degree = {dims.cp}: FlashAttention-4 under context parallel is not "
         "tested yet, so refused; drop 'fa4' (cuDNN's kernel serves)", dims.cp > 1),
        ("needs CUDA GPUs of compute capability 9.x or 10.x (FlashAttention-4); this run is on "
         f"{device_type}: drop 'fa4'", device_type != "cuda")) if on]
    if why:
        raise ConfigError(f"{key} {why[0]}")


def check_fa4_here(cfg: JobConfig) -> None:
    """model.sdpa_kernels 'fa4' on this machine: the GPU and the flash-attn-4 package (a check of the
    machine, not of the layout: the memory estimator plans GPU runs anywhere, so make_plan skips it)."""
    if "fa4" not in cfg.model.sdpa_kernels:
        return
    from titan_models import fa4_problem

    problem = fa4_problem()
    if problem is not None:
        raise ConfigError(f"model.sdpa_kernels = {list(cfg.model.sdpa_kernels)}: 'fa4' cannot run here: {problem}")


def check_chunked_loss(cfg: JobConfig, dims: ParallelDims, spec) -> None:
    """training.loss_chunk_size needs the plain next-token head in one piece."""
    n = cfg.training.loss_chunk_size
    if n == 0:
        return
    why = [w for w, on in (("must be > 0", n < 0),
                           (f"is for language models ({cfg.model.name} is a {spec.task} model)", spec.task != "lm"),
                           ("needs parallelism.tensor_parallel_degree = 1 (with TP the loss is vocab-parallel)",
                            dims.tp > 1),
                           ("needs parallelism.pipeline_parallel_degree = 1", dims.pp > 1),
                           ("needs model.mtp_layers = 0 (the prediction modules share the head)",
                            getattr(cfg.model, "mtp_layers", 0) > 0)) if on]
    if why:
        raise ConfigError(f"training.loss_chunk_size = {n} {why[0]}")


def validate_cp(cfg: JobConfig, dims: ParallelDims, shape) -> None:
    from titan_parallel import ParallelConfigError
    from titan_parallel import context as cp_lib

    p = cfg.parallelism
    try:
        cp_lib.validate_cp(cp_degree=dims.cp, seq_len=cfg.training.seq_len, method=p.context_parallel_method,
                           rotate=p.context_parallel_rotate_method, n_heads=shape.n_heads, tp_degree=dims.tp)
    except ParallelConfigError as e:
        raise ConfigError(f"parallelism.context_parallel_degree = {dims.cp} with context_parallel_method = "
                          f"{p.context_parallel_method!r}, tensor_parallel_degree = {dims.tp} and training.seq_len = "
                          f"{cfg.training.seq_len}: {e}") from None
