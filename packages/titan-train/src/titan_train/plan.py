"""The run's plan: the config read once into small dataclasses that the trainer and the memory
estimator both consume, so a config value flows one way (config -> plan -> build) and every rule
(batch arithmetic, precision, loss parallel, FSDP options, context and pipeline parallel) has
one home. Nothing here needs a process group or builds a model.

    plan = make_plan(cfg, world_size=8, device_type="cuda", vocab_size=tokenizer.vocab_size)
    plan.dims, plan.batch, plan.args, plan.parallel, plan.precision, plan.pipeline, plan.context
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import titan_models
import torch
from titan_mesh import ParallelDims, ParallelDimsError
from titan_models import RunOptions
from titan_parallel import ACOptions, CompileOptions, Float8Options, FSDPOptions

from titan_train import plan_checks as checks
from titan_train.config import JobConfig, uses_float8
from titan_train.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# How the config spells each degree: library errors name these keys, not titan-mesh's fields.
DEGREE_KEYS = {"dp_replicate": "parallelism.data_parallel_replicate_degree",
               "dp_shard": "parallelism.data_parallel_shard_degree", "cp": "parallelism.context_parallel_degree",
               "tp": "parallelism.tensor_parallel_degree", "pp": "parallelism.pipeline_parallel_degree",
               "ep": "parallelism.expert_parallel_degree"}


@dataclass(frozen=True)
class BatchPlan:
    local_batch: int      # sequences per forward/backward on each data-parallel rank
    global_batch: int     # sequences per optimizer step over all data-parallel ranks
    dp: int               # data-parallel ranks (replicate x shard): each reads its own data
    accum_steps: int      # micro-batches per optimizer step on each rank
    seq_len: int
    microbatch: int       # sequences per forward: the pipeline microbatch, else local_batch

    @property
    def tokens_per_step(self) -> int:
        """Global tokens per optimizer step."""
        return self.global_batch * self.seq_len

    @property
    def local_tokens_per_step(self) -> int:
        return self.local_batch * self.seq_len * self.accum_steps


@dataclass(frozen=True)
class Precision:
    """How training.mixed_precision_param is honoured: "fsdp" (FSDP casts parameters), "cast" (one
    GPU without FSDP: titan_parallel.apply_mixed_precision), "autocast" (DDP, as torch.autocast),
    "off" (float32 asked, or CPU), or
    "unsupported" (TP or PP without FSDP: no bf16 path that keeps DTensors exact; float32)."""

    mode: str
    param_dtype: torch.dtype   # what FSDP gathers parameters in
    reduce_dtype: torch.dtype  # what FSDP reduces gradients in

    @property
    def compute_bytes(self) -> int:
        return 2 if self.mode in ("fsdp", "cast", "autocast") and self.param_dtype != torch.float32 else 4


@dataclass(frozen=True)
class ParallelPlan:
    """What each model part gets from titan_parallel.parallelize (float8 is applied before the
    pipeline split, on the whole model)."""

    tp: bool
    loss_parallel: bool
    async_tp: bool
    ulysses: bool
    ac: ACOptions | None
    compile: CompileOptions | None
    dp: str | None               # "fsdp", "ddp" or None (one device without FSDP)
    fsdp: FSDPOptions
    cast_dtype: torch.dtype | None = None  # one GPU without FSDP: the per-unit compute casts
    persistent_casts: bool = False  # those casts kept between steps, written by MasterAdamW (optimizer.fused_casts)


@dataclass(frozen=True)
class PipelinePlan:
    schedule: str
    microbatch_size: int
    module_fqns: list[list[str]] | None  # module names per stage (module_fqns_per_model_part)
    split_points: list[str]              # torchtitan's "layers.4 starts a stage" names
    layers_per_stage: int | None         # None and no names: balanced by the stage planner


@dataclass(frozen=True)
class ContextPlan:
    method: str                  # "ring" | "ulysses"
    rotate: str


@dataclass(frozen=True)
class RunPlan:
    dims: ParallelDims
    device_type: str
    spec: Any                    # titan_models.ModelSpec
    args: Any                    # the family's args, run options applied and validated
    batch: BatchPlan
    precision: Precision
    parallel: ParallelPlan
    float8: Float8Options | None
    pipeline: PipelinePlan | None
    context: ContextPlan | None

    @property
    def flops_per_token(self) -> float:
        """Training FLOPs per token (a mixture of experts: its active parameters)."""
        return self.spec.flops_per_token(self.args, self.batch.seq_len)

    @property
    def task(self) -> str:
        """"lm" (next-token prediction) or "diffusion" (the spec's task)."""
        return getattr(self.spec, "task", "lm")

    @property
    def moe(self) -> bool:
        """Whether the model has mixture-of-experts blocks."""
        return self.spec.shape(self.args).moe_layers > 0


def dims_from_config(cfg: JobConfig, world_size: int) -> ParallelDims:
    """The degrees of `cfg` on `world_size` processes; ConfigError naming the config keys."""
    p = cfg.parallelism
    try:
        return ParallelDims(dp_replicate=p.data_parallel_replicate_degree, dp_shard=p.data_parallel_shard_degree,
                            cp=p.context_parallel_degree, tp=p.tensor_parallel_degree, pp=p.pipeline_parallel_degree,
                            ep=p.expert_parallel_degree, world_size=world_size, names=DEGREE_KEYS)
    except ParallelDimsError as e:
        raise ConfigError(f"{e} (world size: {world_size} processes)") from None


def batch_plan(cfg: JobConfig, dims: ParallelDims) -> BatchPlan:
    p, t = cfg.parallelism, cfg.training
    dp = dims.dp_replicate * dims.dp_shard
    global_batch = t.global_batch_size if t.global_batch_size > 0 else t.local_batch_size * dp
    if global_batch % (t.local_batch_size * dp):
        raise ConfigError(f"training.global_batch_size = {global_batch} must be a multiple of "
                          f"local_batch_size x data-parallel degree = {t.local_batch_size} x {dp}")
    microbatch = t.local_batch_size
    if dims.pp > 1:
        microbatch = p.pipeline_parallel_microbatch_size
        if t.local_batch_size % microbatch:
            raise ConfigError(f"training.local_batch_size = {t.local_batch_size} must be divisible by "
                              f"parallelism.pipeline_parallel_microbatch_size = {microbatch}")
    return BatchPlan(t.local_batch_size, global_batch, dp, global_batch // (t.local_batch_size * dp), t.seq_len,
                     microbatch)


def uses_fsdp(dims: ParallelDims, device_type: str, cfg: JobConfig) -> bool:
    """FSDP when sharding over ranks, and on a single GPU for bf16 mixed precision when asked
    (parallelism.single_gpu_fsdp) or when an option only FSDP carries out is set."""
    if dims.dp_shard * dims.cp > 1:
        return True
    return _one_gpu_bf16(dims, device_type, cfg) and (cfg.parallelism.single_gpu_fsdp or bool(checks.fsdp_only(cfg)))


def uses_casts(dims: ParallelDims, device_type: str, cfg: JobConfig) -> bool:
    """One GPU, bf16 compute, no FSDP: the per-unit casts of titan_parallel.apply_mixed_precision."""
    return _one_gpu_bf16(dims, device_type, cfg) and not uses_fsdp(dims, device_type, cfg)


def _one_gpu_bf16(dims: ParallelDims, device_type: str, cfg: JobConfig) -> bool:
    return device_type == "cuda" and dims.world_size == 1 and cfg.training.mixed_precision_param != "float32"


def precision_plan(cfg: JobConfig, dims: ParallelDims, device_type: str) -> Precision:
    t = cfg.training
    gpu = device_type == "cuda"
    param = DTYPES[t.mixed_precision_param] if gpu else torch.float32
    reduce = DTYPES[t.mixed_precision_reduce] if gpu else torch.float32
    if not gpu or t.mixed_precision_param == "float32":
        mode = "off"
    elif uses_fsdp(dims, device_type, cfg):
        mode = "fsdp"
    elif uses_casts(dims, device_type, cfg):
        mode = "cast"
    elif dims.tp > 1 or dims.pp > 1:
        mode = "unsupported"
    else:
        mode = "autocast"
    return Precision(mode, param, reduce)


def model_args(cfg: JobConfig, spec, vocab_size: int, dims: ParallelDims, eos_id: int | None = None):
    """The family's args for `cfg`: flavor, then the run's options, validated under the degrees."""
    m = cfg.model
    want_vocab = m.vocab_size if m.vocab_size > 0 else vocab_size
    if want_vocab < vocab_size:
        raise ConfigError(f"model.vocab_size = {want_vocab} is smaller than the tokenizer's {vocab_size} ids")
    if m.attn_mask == "block_causal" and (dims.pp > 1 or (
            dims.cp > 1 and cfg.parallelism.context_parallel_method == "ulysses")):
        raise ConfigError("model.attn_mask = 'block_causal' does not combine with pipeline parallel or "
                          "Ulysses context parallel yet; use attn_mask = 'causal' there")
    options = RunOptions(
        max_seq_len=cfg.training.seq_len, vocab_size=want_vocab, n_layers=m.n_layers if m.n_layers > 0 else None,
        tie_embeddings=m.tie_embeddings, attn_backend=m.attn_backend, attn_mask=m.attn_mask,
        sdpa_kernels=tuple(m.sdpa_kernels), eos_id=eos_id if m.attn_mask == "block_causal" else None,
        # context parallel keeps the path it was checked on: k/v repeated to all heads
        repeat_kv=dims.cp > 1,
        moe_load_balance_coeff=cfg.moe.load_balance_coeff, moe_aux_loss=cfg.moe.aux_loss_weight,
        **_mtp_options(cfg, spec))
    args = spec.with_options(spec.args_for(m.flavor), options)
    spec.validate(args, tp=dims.tp, cp=dims.cp, pp=dims.pp, names={**DEGREE_KEYS, "max_seq_len": "training.seq_len"})
    _check_moe(cfg, spec.shape(args), dims)
    return args


def _mtp_options(cfg: JobConfig, spec) -> dict:
    """RunOptions fields for multi-token prediction, when asked for and the family has it."""
    m = cfg.model
    if m.mtp_layers < 0 or m.mtp_loss_weight < 0:
        raise ConfigError(f"model.mtp_layers = {m.mtp_layers} and model.mtp_loss_weight = {m.mtp_loss_weight} "
                          "must be >= 0 (mtp_layers 0: off)")
    if m.mtp_layers == 0:
        return {}
    if not any(f.name == "mtp_layers" for f in dataclasses.fields(next(iter(spec.flavors.values())))):
        from titan_models import MODEL_SPECS

        have = [n for n, s in MODEL_SPECS.items()
                if any(f.name == "mtp_layers" for f in dataclasses.fields(next(iter(s.flavors.values()))))]
        raise ConfigError(f"model.mtp_layers = {m.mtp_layers}: {m.name} has no multi-token prediction modules "
                          f"(families with them: {', '.join(have)}); set it to 0")
    return {"mtp_layers": m.mtp_layers, "mtp_loss_weight": m.mtp_loss_weight}


def _check_moe(cfg: JobConfig, shape, dims: ParallelDims) -> None:
    """Expert options against the model and the layout, naming the keys."""
    m, ep = cfg.moe, dims.ep
    if m.load_balance_coeff < 0 or m.aux_loss_weight < 0:
        raise ConfigError(f"moe.load_balance_coeff = {m.load_balance_coeff} and moe.aux_loss_weight = "
                          f"{m.aux_loss_weight} must be >= 0 (0: off)")
    if shape.moe_layers == 0:
        if ep > 1:
            raise ConfigError(f"{DEGREE_KEYS['ep']} = {ep}, but {cfg.model.name} {cfg.model.flavor} has no experts "
                              "(a dense model): set it to 1, or pick a mixture-of-experts flavor")
        return
    if shape.n_experts % ep:
        allowed = ", ".join(str(d) for d in range(1, shape.n_experts + 1) if shape.n_experts % d == 0)
        raise ConfigError(f"{DEGREE_KEYS['ep']} = {ep} does not divide the {shape.n_experts} experts of "
                          f"{cfg.model.name} {cfg.model.flavor}; allowed: {allowed}")
    if m.aux_loss_weight > 0 and (dims.tp > 1 or dims.cp > 1):
        raise ConfigError(f"moe.aux_loss_weight = {m.aux_loss_weight} with {DEGREE_KEYS['tp']} = {dims.tp} and "
                          f"{DEGREE_KEYS['cp']} = {dims.cp}: the sequence-wise loss would see only each rank's "
                          "shard of a sequence; use moe.load_balance_coeff (aux-loss-free) there")


def _ac(cfg: JobConfig) -> ACOptions | None:
    ac = cfg.activation_checkpoint
    if ac.mode in ("none", "memory_budget"):  # memory_budget: no wrappers, the compiled graphs decide
        return None
    if ac.mode == "selective" and ac.selective_ac_option != "op":
        return ACOptions(mode="selective", layer_freq=int(ac.selective_ac_option))
    return ACOptions(mode=ac.mode)


def _memory_budget(cfg: JobConfig) -> float | None:
    ac = cfg.activation_checkpoint
    return ac.memory_budget if ac.mode == "memory_budget" else None


def float8_options(cfg: JobConfig, spec) -> Float8Options | None:
    """The float8 conversion, with the family's must-skip linears joined to the configured filter."""
    if not uses_float8(cfg):
        return None
    f8 = cfg.float8
    skip = tuple(dict.fromkeys([*f8.filter_fqns, *spec.float8_skip]))
    return Float8Options(recipe=f8.recipe_name or "tensorwise", skip=tuple(s for s in skip if s != "auto_filter_small_kn"),
                         skip_small="auto_filter_small_kn" in skip,
                         fsdp_float8_all_gather=f8.enable_fsdp_float8_all_gather,
                         precompute_scale=f8.precompute_float8_dynamic_scale_for_fsdp, emulate=f8.emulate)


def parallel_plan(cfg: JobConfig, dims: ParallelDims, device_type: str, precision: Precision) -> ParallelPlan:
    p, c = cfg.parallelism, cfg.compile
    fsdp = uses_fsdp(dims, device_type, cfg)
    # under PP several microbatches reuse the gathered params: keep them ("default" there = never)
    reshard = {"default": False if dims.pp > 1 else "default", "always": True,
               "never": False}[p.fsdp_reshard_after_forward]
    return ParallelPlan(
        tp=dims.tp > 1, loss_parallel=dims.tp > 1 and not p.disable_loss_parallel and dims.pp == 1,
        async_tp=p.enable_async_tensor_parallel and dims.tp > 1,
        ulysses=dims.cp > 1 and p.context_parallel_method == "ulysses", ac=_ac(cfg),
        compile=CompileOptions(backend=c.backend, kwargs=compile_kwargs(cfg), memory_budget=_memory_budget(cfg))
        if c.enable and "model" in c.components else None,
        dp="fsdp" if fsdp else ("ddp" if dims.dp_replicate > 1 else None),
        fsdp=FSDPOptions(param_dtype=precision.param_dtype, reduce_dtype=precision.reduce_dtype,
                         reshard_after_forward=reshard, cpu_offload=cfg.training.enable_cpu_offload),
        cast_dtype=precision.param_dtype if precision.mode == "cast" else None,
        persistent_casts=cfg.optimizer.fused_casts and precision.mode == "cast")


def compile_kwargs(cfg: JobConfig) -> dict:
    """torch.compile's keyword arguments besides the backend (compile.mode), for blocks and loss."""
    return {} if cfg.compile.mode == "default" else {"mode": cfg.compile.mode}


def make_plan(cfg: JobConfig, *, world_size: int, device_type: str, vocab_size: int,
              eos_id: int | None = None) -> RunPlan:
    """The plan of `cfg` on `world_size` processes of `device_type`; ConfigError for anything the
    trainer would refuse, naming the config keys, before any work starts."""
    p = cfg.parallelism
    dims = dims_from_config(cfg, world_size)
    if dims.cp > 1 and p.context_parallel_method == "ring":
        checks.check_ring(cfg, dims, device_type)
    batch = batch_plan(cfg, dims)
    precision = precision_plan(cfg, dims, device_type)
    parallel = parallel_plan(cfg, dims, device_type, precision)
    checks.check_fsdp_options(cfg, parallel)
    checks.check_fused_casts(cfg, precision, batch)
    checks.check_fa4(cfg, dims, device_type)
    spec = titan_models.get_model_spec(cfg.model.name)
    if spec.task == "diffusion":  # images: joint image + text sequences, no vocabulary
        from titan_train.diffusion import rules

        rules.check(cfg, dims)
        args = rules.model_args(cfg, spec, dims)
        batch = dataclasses.replace(batch, seq_len=rules.joint_seq_len(cfg))
    else:
        args = model_args(cfg, spec, vocab_size, dims, eos_id)
    context = None
    if dims.cp > 1:
        context = ContextPlan(p.context_parallel_method, p.context_parallel_rotate_method)
        checks.validate_cp(cfg, dims, spec.shape(args))
    pipeline = None
    if dims.pp > 1:
        if p.pipeline_parallel_layers_per_stage is not None and (
                p.module_fqns_per_model_part is not None or p.pipeline_parallel_split_points):
            raise ConfigError("parallelism.pipeline_parallel_layers_per_stage and explicit stage boundaries "
                              "(pipeline_parallel_split_points / module_fqns_per_model_part) both given: use one")
        pipeline = PipelinePlan(p.pipeline_parallel_schedule, p.pipeline_parallel_microbatch_size,
                                p.module_fqns_per_model_part, list(p.pipeline_parallel_split_points),
                                p.pipeline_parallel_layers_per_stage)
    checks.check_chunked_loss(cfg, dims, spec)
    return RunPlan(dims=dims, device_type=device_type, spec=spec, args=args, batch=batch, precision=precision,
                   parallel=parallel, float8=float8_options(cfg, spec), pipeline=pipeline, context=context)
