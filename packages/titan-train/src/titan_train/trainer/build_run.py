"""build_run(cfg): config -> a ready Run, failing on bad input before any heavy work."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import titan_models
import titan_parallel as tp_lib
import torch
from titan_mesh import set_collective_timeout

from titan_train.config import JobConfig
from titan_train.errors import ConfigError
from titan_train.plan import RunPlan, compile_kwargs, make_plan
from titan_train.plan_checks import check_fa4_here
from titan_train.trainer import checkpointing, pipeline
from titan_train.trainer.build_model import apply_converters, parallelize_part
from titan_train.trainer.hardware import device_peak
from titan_train.trainer.metrics import MetricsLogger, MetricsSettings
from titan_train.trainer.moe import LoadBalance
from titan_train.trainer.mtp import MTPLoss
from titan_train.trainer.optim import (
    OptimizerSettings,
    ScheduleSettings,
    build_lr_scheduler,
    build_optimizer,
)
from titan_train.trainer.prefetch import Prefetcher
from titan_train.trainer.profiling import make_profiler
from titan_train.trainer.run import Run, dump_path, make_validator
from titan_train.trainer.setup import (
    build_loader,
    check_dump_folder,
    load_tokenizer,
    mesh_of,
    seed_everything,
    setup_distributed,
)
from titan_train.trainer.state import TrainState
from titan_train.trainer.step import StepRunner, cross_entropy_loss


def _train_context(plan: RunPlan, layout, parts):
    """Context for forward+backward: loss parallel (TP), context parallel (CP) and autocast
    (bf16 compute for layouts whose parameters FSDP does not cast) when enabled."""
    dims, device = layout.dims, layout.info.device
    loss_parallel = plan.parallel.loss_parallel
    autocast = plan.precision.mode == "autocast"

    def ctx(batch: list[torch.Tensor]):
        stack = contextlib.ExitStack()
        if autocast:
            stack.enter_context(torch.autocast(device.type, dtype=plan.precision.param_dtype))
        if plan.context is not None:
            stack.enter_context(pipeline.cp_context(plan, dims, parts, batch))
        if loss_parallel:
            from torch.distributed.tensor.parallel import loss_parallel as lp

            stack.enter_context(lp())
        return stack

    return ctx


def _optimizers(cfg: JobConfig, parts):
    o = cfg.optimizer
    settings = OptimizerSettings(o.name, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.implementation)
    sched = ScheduleSettings(cfg.training.steps, cfg.lr_scheduler.warmup_steps, cfg.lr_scheduler.decay_ratio,
                             cfg.lr_scheduler.decay_type, cfg.lr_scheduler.min_lr_factor)
    optimizers = [build_optimizer(part, settings) for part in parts]
    return optimizers, [build_lr_scheduler(opt, sched) for opt in optimizers], sched


def _configure_cuda_allocator(conf: str) -> None:
    """Apply training.cuda_alloc_conf unless the environment sets the allocator up itself.

    Through torch's allocator API, not the environment: torch reads PYTORCH_CUDA_ALLOC_CONF when
    it is imported, so setting the variable here would be too late. Expandable segments let freed
    blocks merge, so reserved memory stays close to what is allocated.
    """
    if not conf or not torch.cuda.is_available():
        return
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"):
        return
    # torch >= 2.10 moved the setter to the accelerator API; the cuda one warns there.
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setter(conf)


def build_run(cfg: JobConfig, resume: checkpointing.Resume | None = None) -> Run:
    """Build everything for `cfg`; `resume` (from checkpointing.plan_resume) says what to load."""
    if resume is None:
        resume = checkpointing.plan_resume(cfg)
    _configure_cuda_allocator(cfg.training.cuda_alloc_conf)
    check_dump_folder(cfg.job.dump_folder)
    if cfg.checkpoint.enable:  # an absolute checkpoint.folder may lie outside the dump folder
        check_dump_folder(str(dump_path(cfg, cfg.checkpoint.folder)), "checkpoint.folder")
    diffusion = titan_models.get_model_spec(cfg.model.name).task == "diffusion"
    tokenizer = None if diffusion else load_tokenizer(cfg)    # the tokenizer file (a language model's)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    plan = make_plan(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")), device_type=device_type,
                     vocab_size=tokenizer.vocab_size if tokenizer else 0,
                     eos_id=tokenizer.eos_id if tokenizer else None)  # every layout rule, checked
    check_fa4_here(cfg)                                       # and what the layout needs of this machine
    if cfg.memory_estimation.enable:                          # a layout that cannot fit stops here
        from titan_train.memory import precheck

        table = precheck(cfg, plan.dims.world_size, torch.device(plan.device_type))
        if table and os.environ.get("RANK", "0") == "0":
            print(table, flush=True)
    if cfg.validation.enable and plan.dims.pp > 1:
        raise ConfigError("validation.enable with pipeline_parallel_degree > 1 is not supported yet")
    if cfg.validation.enable and plan.batch.dp > 1 and cfg.validation.steps < 1:
        raise ConfigError("validation.steps must be >= 1 with data parallelism (every rank must run the "
                          "same number of batches)")
    layout = setup_distributed(cfg, plan)                     # process groups only after all checks
    dims, device = layout.dims, layout.info.device
    task = None
    if diffusion:  # images and captions, frozen encoders: the diffusion task's own pieces
        from titan_train.diffusion.build import build_task

        task = build_task(cfg, plan, layout, device)
        loader = Prefetcher(task.loader(), device)
    else:
        loader = Prefetcher(build_loader(cfg, tokenizer, layout), device)  # dataset name/path
        if cfg.validation.enable:  # its dataset is checked now, not at the first validation
            build_loader(cfg, tokenizer, layout, validation=True)
    seed = seed_everything(cfg, layout)
    if task is not None:  # the run's seed (drawn and broadcast when unset) seeds every sample's noise
        task.objective.seed = seed

    with torch.device("meta"):
        model = plan.spec.build(plan.args)
    if "fa4" in cfg.model.sdpa_kernels:  # before anything compiles: kernel registration is not traceable
        titan_models.activate_fa4(device)
    apply_converters(model, plan)
    if cfg.model.print_after_conversion and layout.info.rank == 0:
        print(model, flush=True)
    stages, parts = pipeline.split(plan, dims, model) if plan.pipeline else (None, [model])
    parts = [parallelize_part(p, plan, dims) for p in parts]
    for part in parts:
        # with FSDP CPU offload the sharded parameters live on the CPU
        tp_lib.init_weights(part, device="cpu" if cfg.training.enable_cpu_offload else device)
        part.train()

    optimizers, schedulers, schedule = _optimizers(cfg, parts)
    loss_fn = cross_entropy_loss
    if cfg.compile.enable and "loss" in cfg.compile.components:
        loss_fn = torch.compile(cross_entropy_loss, backend=cfg.compile.backend, **compile_kwargs(cfg))
    pp_mesh = mesh_of(dims, "pp")
    loss_mesh = mesh_of(dims, "dp_cp")
    train_context = _train_context(plan, layout, parts)
    pipe = pipeline.Pipeline(plan, dims, stages, parts, loss_fn, device) if stages is not None else None
    after_step = None
    if plan.float8 is not None and plan.float8.precompute_scale:
        after_step = lambda: [tp_lib.precompute_float8_scales(p) for p in parts]  # noqa: E731
    ema_update = task.attach_ema(parts) if task is not None else None
    if ema_update is not None:
        after_step = _chain(after_step, ema_update)
    balance = None
    if plan.moe:
        balance = LoadBalance(parts, plan.spec.moe_modules, coeff=cfg.moe.load_balance_coeff,
                              routing_mesh=mesh_of(dims, "routing"), pp_mesh=pp_mesh,
                              loss_scale=1.0 / plan.batch.accum_steps)
    forward_loss = task.forward_loss if task else None
    if cfg.training.loss_chunk_size > 0:  # logits never materialized whole (plan checked the layout)
        from titan_train.trainer.chunked_loss import attach_chunked_head

        try:
            head = attach_chunked_head(parts[0].output, chunk=cfg.training.loss_chunk_size,
                                       compile_chunk=cfg.compile.enable and "loss" in cfg.compile.components)
        except TypeError as e:
            raise ConfigError(f"training.loss_chunk_size = {cfg.training.loss_chunk_size}: {e}") from None
        forward_loss = head.forward_loss
    runner = StepRunner(parts=parts, optimizers=optimizers, schedulers=schedulers, device=device,
                        accum_steps=plan.batch.accum_steps, max_norm=cfg.training.max_norm, loss_fn=loss_fn,
                        clip_fn=lambda params, max_norm: tp_lib.clip_grad_norm_(params, max_norm, pp_mesh=pp_mesh),
                        train_context=train_context, pipeline=pipe, after_optimizer_step=after_step,
                        after_backward=balance, forward_loss=forward_loss,
                        tokens_of=task.tokens_of if task else None)
    m = cfg.metrics
    writer = layout.info.rank == 0 or m.save_for_all_ranks
    metrics = MetricsLogger(MetricsSettings(cfg.job.dump_folder, m.enable_tensorboard, m.save_tb_folder,
                                            m.enable_wandb, not m.disable_color_printing and sys.stdout.isatty(), writer,
                                            layout.info.rank, m.save_for_all_ranks),
                            config_for_wandb=dataclasses.asdict(cfg) if m.enable_wandb else None)
    validator = None
    state = TrainState()
    if cfg.validation.enable and task is not None:
        validator = task.validator(parts[0], loss_mesh, train_context, metrics, lambda: state.step, layout.info.rank)
    elif cfg.validation.enable:
        validator = make_validator(cfg, lambda: build_loader(cfg, tokenizer, layout, validation=True),
                                   parts[0], loss_fn, device, loss_mesh, train_context)
    run = Run(cfg=cfg, plan=plan, device=device, world_size=layout.info.world_size, parts=parts,
              optimizers=optimizers, schedulers=schedulers, loader=loader, step_runner=runner, metrics=metrics,
              state=state, loss_mesh=loss_mesh, pp_mesh=pp_mesh, peak=device_peak(device),
              validator=validator, profiler=make_profiler(cfg, layout.info.rank, device), schedule=schedule,
              dims=dims, moe=balance, mtp=MTPLoss(parts, loss_mesh, loss_scale=1.0 / plan.batch.accum_steps) or None)
    if layout.info.world_size > 1:  # the init timeout covers set-up and the first step
        run.after_first_step = lambda: set_collective_timeout(cfg.comm.train_timeout_seconds,
                                                              dims.process_groups())
        run.after_training = lambda: set_collective_timeout(cfg.comm.init_timeout_seconds,
                                                            dims.process_groups(), barrier=False)
    run.metrics.log_text(_banner(run, layout))
    for note in task.notes if task is not None else ():
        run.metrics.log_text(note)
    for note in schedule.notes():
        run.metrics.log_text(note)
    run.ema = task.ema if task is not None else None
    if task is not None:
        run.samples_per_token = 1.0 / task.seq_len
    checkpointing.attach(run, layout, plan.spec, plan.args, resume)
    if run.ema is not None and (resume.step is None or resume.model_only
                                or "ema" in cfg.checkpoint.exclude_from_loading):
        run.ema.reset()  # the average starts at the initial (possibly loaded) weights
    return run


def _chain(first, second):
    if first is None:
        return second
    return lambda: (first(), second())


def _banner(run: Run, layout) -> str:
    cfg, plan = run.cfg, run.plan
    n = plan.spec.num_params(plan.args)
    active = plan.spec.num_params(plan.args, active=True)
    params = f"{n / 1e6:,.1f}M params" + (f" ({active / 1e6:,.1f}M active)" if active != n else "")
    dims = [*layout.dims.enabled_dims(), *([("ep", layout.dims.ep)] if layout.dims.ep > 1 else [])]
    deg = ", ".join(f"{k}={v}" for k, v in dims) or "single process"
    if layout.info.world_size == 1 and plan.precision.mode in ("cast", "fsdp"):  # which one-GPU bf16 path
        deg += ", bf16 per-block casts" if plan.precision.mode == "cast" else ", bf16 FSDP2 on one rank"
    note = f" ({run.peak.note})" if run.peak.note else ""
    if plan.precision.mode == "unsupported":
        note += (" (training in float32: bf16 with tensor or pipeline parallelism goes through FSDP; "
                 "set parallelism.data_parallel_shard_degree > 1)")
    b = plan.batch
    return (f"{cfg.job.description}\n"
            f"Titan: {cfg.model.name} {cfg.model.flavor} on {layout.info.world_size} x {run.device.type}"
            f" [{deg}]{note}; {params}; global batch {b.global_batch} x {b.seq_len} "
            f"tokens ({b.accum_steps} micro-batch(es)/step); {cfg.training.steps} steps; dump folder "
            f"{cfg.job.dump_folder}")
