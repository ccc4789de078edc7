"""Config sections about how the run is laid out and observed: parallelism, AC, compile, float8,
checkpointing, metrics, profiling, communication, memory estimation."""

from __future__ import annotations

from dataclasses import dataclass

from titan_train.config.fields import opt, sub

PP_SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
                "ZBVZeroBubble", "DualPipeV")


@dataclass
class Parallelism:
    data_parallel_replicate_degree: int = opt(1, "HSDP/DDP replicas")
    data_parallel_shard_degree: int = opt(-1, "FSDP shards (-1: whatever the other degrees leave)")
    fsdp_reshard_after_forward: str = opt("default", "free gathered params (one GPU: the bf16 casts) after forward; never = "
                                          "keep them for backward (faster, more memory)",
                                          choices=("default", "always", "never"))
    single_gpu_fsdp: bool = opt(False, "one GPU: FSDP2 on one rank holds the bf16 copies (default off: per-block "
                                       "casts, the same numbers with fewer copies of the weights per step)")
    tensor_parallel_degree: int = opt(1, "tensor parallel ranks (inside a node)")
    disable_loss_parallel: bool = opt(False, "gather logits instead of computing the loss on sharded vocab")
    enable_async_tensor_parallel: bool = opt(False, "overlap TP collectives with matmuls (GPU + compile)")
    pipeline_parallel_degree: int = opt(1, "pipeline stages across ranks")
    pipeline_parallel_schedule: str = opt("1F1B", "pipeline schedule", choices=PP_SCHEDULES)
    pipeline_parallel_microbatch_size: int = opt(1, "sequences per pipeline microbatch")
    pipeline_parallel_layers_per_stage: int | None = opt(
        None, "blocks per (virtual) stage, the last may hold fewer (a multiple of pp stages); unset = balanced")
    pipeline_parallel_split_points: list[str] = opt([], "module names where new stages begin, e.g. layers.4")
    module_fqns_per_model_part: list[list[str]] | None = opt(None, "explicit module names for each stage")
    context_parallel_degree: int = opt(1, "context parallel ranks (sequence sharding, GPU only)")
    context_parallel_method: str = opt("ring", "ring (torch's ring attention, GPU) or ulysses (all-to-all over "
                                       "heads; heads / tp must divide by cp)", choices=("ring", "ulysses"))
    context_parallel_rotate_method: str = opt("allgather", "how ring attention passes KV shards",
                                              choices=("allgather", "alltoall"))
    expert_parallel_degree: int = opt(1, "expert parallel ranks for mixture-of-experts models: each holds "
                                         "1/ep of the experts; borrowed from dp_shard x cp x tp (tp first)")


@dataclass
class MoE:
    load_balance_coeff: float = opt(1e-3, "aux-loss-free balancing: each optimizer step moves every expert's "
                                          "routing bias by this toward even load (0: off)")
    aux_loss_weight: float = opt(0.0, "weight of the sequence-wise balance loss added to the gradient (0: off; "
                                      "not with tensor or context parallel)")


@dataclass
class ActivationCheckpoint:
    mode: str = opt("none", "recompute activations in backward (memory_budget: the compiler picks what to "
                            "recompute, see memory_budget)", choices=("none", "selective", "full", "memory_budget"))
    selective_ac_option: str = opt("op", "'op' (per-op save list) or an integer k (every k-th block)")
    memory_budget: float = opt(0.5, "mode = 'memory_budget' (needs compile): each compiled block keeps this fraction "
                                    "of the way from recomputing all it can (0) to saving everything (1); torch's "
                                    "min-cut partitioner recomputes the cheapest rest")


@dataclass
class Compile:
    enable: bool = opt(False, "torch.compile each transformer block (and the loss)")
    components: list[str] = opt(["model", "loss"], "what to compile: model, loss")
    backend: str = opt("inductor", "torch.compile backend")
    mode: str = opt("default", "torch.compile mode of the blocks and the loss; max-autotune-no-cudagraphs lets "
                               "Inductor time Triton GEMM templates against cuBLAS (minutes more compile; "
                               "measure before keeping it)", choices=("default", "max-autotune-no-cudagraphs"))


@dataclass
class Float8:
    enable_fsdp_float8_all_gather: bool = opt(False, "all-gather FSDP params in float8 (tensorwise)")
    precompute_float8_dynamic_scale_for_fsdp: bool = opt(False, "one amax all-reduce per step for all params")
    recipe_name: str | None = opt(None, "None/tensorwise, rowwise or rowwise_with_gw_hp")
    filter_fqns: list[str] = opt(["output"], "linears to keep in high precision (substrings; auto_filter_small_kn)")
    emulate: bool = opt(False, "emulate float8 (CPU / old GPUs; for testing only)")


@dataclass
class Linear:
    float8: Float8 = sub(Float8, "float8 training of linear layers through torchao")


@dataclass
class Quantize:
    linear: Linear = sub(Linear, "quantized linear layers")


@dataclass
class Checkpoint:
    enable: bool = opt(False, "save checkpoints and resume from the newest complete one")
    folder: str = opt("checkpoint", "folder under job.dump_folder")
    interval: int = opt(500, "save every N steps")
    async_mode: str = opt("disabled", "save in the background", choices=("disabled", "async", "async_with_pinned_mem"))
    keep_latest_k: int = opt(10, "keep the newest k checkpoints (0 = all)")
    load_step: int = opt(-1, "load this step instead of the newest (-1 = newest)")
    exclude_from_loading: list[str] = opt([], "parts not to load: model, optimizer, lr_scheduler, dataloader, train_state")
    initial_load_path: str | None = opt(None, "checkpoint folder to start from when dump_folder has none")
    initial_load_in_hf: bool = opt(False, "initial_load_path (or, when unset, model.hf_assets_path) holds Hugging "
                                          "Face safetensors")
    initial_load_model_only: bool = opt(True, "load only the model from initial_load_path")
    last_save_model_only: bool = opt(True, "after the last step, also write the model's weights alone (in "
                                            "export_dtype) to <dump_folder>/export/step-N; the full last checkpoint "
                                            "stays, so the run can be extended")
    last_save_in_hf: bool = opt(False, "also export the final weights as Hugging Face safetensors + config.json "
                                       "to <dump_folder>/hf/step-N (even with checkpoint.enable off)")
    export_dtype: str = opt("float32", "dtype of the final exports (export/ and hf/)",
                            choices=("float32", "bfloat16", "float16"))
    create_seed_checkpoint: bool = opt(False, "write step-0 weights on one process, then exit")
    enable_first_step_checkpoint: bool = opt(False, "also save right after step 1")


@dataclass
class Metrics:
    log_freq: int = opt(10, "log every N steps")
    enable_tensorboard: bool = opt(True, "write TensorBoard events")
    save_tb_folder: str = opt("tb", "TensorBoard folder under job.dump_folder")
    enable_wandb: bool = opt(False, "log to Weights & Biases (needs wandb installed)")
    disable_color_printing: bool = opt(False, "plain console output (colors are used only on a terminal)")
    save_for_all_ranks: bool = opt(False, "every rank writes its own metrics (default: rank 0)")


@dataclass
class Profiling:
    enable_profiling: bool = opt(False, "torch profiler traces")
    save_traces_folder: str = opt("profile_traces", "trace folder under job.dump_folder")
    profile_freq: int = opt(10, "trace every N steps")
    profiler_active: int = opt(1, "steps recorded per trace")
    profiler_warmup: int = opt(3, "profiler warm-up steps before recording")
    enable_memory_snapshot: bool = opt(False, "CUDA memory snapshots (GPU)")
    save_memory_snapshot_folder: str = opt("memory_snapshot", "snapshot folder under job.dump_folder")


@dataclass
class Comm:
    init_timeout_seconds: int = opt(300, "collective timeout until the first step is done (set-up, compile, loading)")
    train_timeout_seconds: int = opt(100, "collective timeout from the second step on (a hung rank fails fast)")
    trace_buf_size: int = opt(20000, "NCCL flight-recorder entries (0 = off)")
    save_traces_folder: str = opt("comm_traces", "flight-recorder dump folder under job.dump_folder")


@dataclass
class MemoryEstimation:
    enable: bool = opt(False, "estimate peak memory before building the model; stop if it cannot fit")
    gpu_memory_gib: float = opt(0.0, "memory per GPU to check against (0 = the detected GPU)")
