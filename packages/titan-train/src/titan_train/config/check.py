"""Checks that need only the config (no world size, no files): choices, ranges, combinations."""

from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from typing import Any

from titan_models.common.attention import SDPA_KERNELS  # the one list of kernel names

from titan_train.config.fields import choices_of
from titan_train.config.job_config import JobConfig
from titan_train.errors import ConfigError

CONVERTERS = ("quantize.linear.float8", "float8")


def uses_float8(c: JobConfig) -> bool:
    """model.converters asks for float8 linears (under either of its names)."""
    return any(conv in CONVERTERS for conv in c.model.converters)


def _check_choices(obj: Any, prefix: str) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
            continue
        choices = choices_of(f)
        if choices and value not in choices:
            raise ConfigError(f"{prefix}{f.name} = {value!r} is not allowed; choose one of: {', '.join(choices)}")


def _at_least(key: str, value: int | float, low: int | float) -> None:
    if value < low:
        raise ConfigError(f"{key} = {value!r} must be >= {low}")


def check_config(c: JobConfig) -> None:
    """Raise ConfigError for any value that cannot work whatever the machine."""
    _check_choices(c, "")
    t, p = c.training, c.parallelism
    for key, value in (("training.steps", t.steps), ("training.local_batch_size", t.local_batch_size),
                       ("training.seq_len", t.seq_len), ("metrics.log_freq", c.metrics.log_freq),
                       ("checkpoint.interval", c.checkpoint.interval), ("training.gc_freq", t.gc_freq),
                       ("validation.freq", c.validation.freq),
                       ("validation.local_batch_size", c.validation.local_batch_size),
                       ("validation.seq_len", c.validation.seq_len),
                       ("parallelism.pipeline_parallel_microbatch_size", p.pipeline_parallel_microbatch_size),
                       ("profiling.profile_freq", c.profiling.profile_freq),
                       ("comm.init_timeout_seconds", c.comm.init_timeout_seconds),
                       ("comm.train_timeout_seconds", c.comm.train_timeout_seconds)):
        _at_least(key, value, 1)
    for key, value in (("parallelism.data_parallel_replicate_degree", p.data_parallel_replicate_degree),
                       ("parallelism.tensor_parallel_degree", p.tensor_parallel_degree),
                       ("parallelism.pipeline_parallel_degree", p.pipeline_parallel_degree),
                       ("parallelism.context_parallel_degree", p.context_parallel_degree)):
        _at_least(key, value, 1)
    if p.data_parallel_shard_degree != -1:
        _at_least("parallelism.data_parallel_shard_degree (or -1)", p.data_parallel_shard_degree, 1)
    if c.model.n_layers != -1:
        _at_least("model.n_layers (or -1)", c.model.n_layers, 1)
    if t.global_batch_size != -1:
        _at_least("training.global_batch_size (or -1)", t.global_batch_size, 1)
    _at_least("optimizer.lr", c.optimizer.lr, 0.0)
    _at_least("lr_scheduler.warmup_steps", c.lr_scheduler.warmup_steps, 0)
    _at_least("training.max_norm", t.max_norm, 0.0)
    _at_least("checkpoint.keep_latest_k", c.checkpoint.keep_latest_k, 0)
    if not 0.0 <= c.lr_scheduler.min_lr_factor <= 1.0:
        raise ConfigError(f"lr_scheduler.min_lr_factor = {c.lr_scheduler.min_lr_factor} must be within [0, 1]")
    ratio = c.lr_scheduler.decay_ratio
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"lr_scheduler.decay_ratio = {ratio} must be within [0, 1] (0: no decay, the peak LR "
                          "after warm-up, as in torchtitan), or unset")
    if c.activation_checkpoint.mode == "memory_budget":
        budget = c.activation_checkpoint.memory_budget
        if not 0.0 <= budget <= 1.0:
            raise ConfigError(f"activation_checkpoint.memory_budget = {budget} must be within [0, 1] (0: recompute "
                              "all the compiler can, 1: save everything)")
        if not (c.compile.enable and "model" in c.compile.components):
            raise ConfigError("activation_checkpoint.mode = 'memory_budget' needs compile.enable = true with 'model' "
                              "in compile.components: the budget is applied by the compiler; without compile use "
                              "mode = 'selective' or 'full'")
    opt = c.activation_checkpoint.selective_ac_option
    if c.activation_checkpoint.mode == "selective" and opt != "op" and not (opt.isdigit() and int(opt) > 0):
        raise ConfigError(f"activation_checkpoint.selective_ac_option = {opt!r}: use 'op' or a positive "
                          "integer k (checkpoint every k-th block)")
    bad_kernels = [k for k in c.model.sdpa_kernels if k not in SDPA_KERNELS]
    if bad_kernels:
        raise ConfigError(f"model.sdpa_kernels: unknown kernel(s) {bad_kernels}; known: {', '.join(SDPA_KERNELS)}")
    for conv in c.model.converters:
        if conv not in CONVERTERS:
            raise ConfigError(f"model.converters: unknown converter {conv!r}; known: {CONVERTERS[0]}")
    unknown = set(c.checkpoint.exclude_from_loading) - {"model", "optimizer", "lr_scheduler", "dataloader",
                                                         "train_state", "ema"}
    if unknown:
        raise ConfigError(f"checkpoint.exclude_from_loading: unknown part(s) {sorted(unknown)}; known: model, "
                          "optimizer, lr_scheduler, dataloader, train_state, ema (diffusion.ema_decay > 0)")
    _check_combinations(c)
    if c.compile.enable:
        bad = set(c.compile.components) - {"model", "loss"}
        if bad:
            raise ConfigError(f"compile.components: unknown {sorted(bad)}; known: model, loss")
        from torch._dynamo import list_backends

        if c.compile.backend not in set(list_backends(exclude_tags=())) | {"inductor"}:
            common = sorted(set(list_backends()) | {"inductor"})  # without debug-only backends
            close = difflib.get_close_matches(c.compile.backend, common, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"compile.backend = {c.compile.backend!r} is not a torch.compile backend; "
                              f"known: {', '.join(common)}.{hint}")


def _task(c: JobConfig) -> str:
    """The model family's task ("lm" or "diffusion"); "lm" for a name the model check will refuse."""
    import titan_models

    spec = titan_models.MODEL_SPECS.get(c.model.name)
    return getattr(spec, "task", "lm")


def _check_combinations(c: JobConfig) -> None:
    """Options that only work together with others."""
    t, p, v = c.training, c.parallelism, c.validation
    if t.stop_at_step >= 0 and not c.checkpoint.enable:
        raise ConfigError(f"training.stop_at_step = {t.stop_at_step} ends the run early so that a later one "
                          "resumes, which needs checkpoint.enable = true")
    ck = c.checkpoint
    if ck.initial_load_in_hf and not (ck.initial_load_path or c.model.hf_assets_path):
        raise ConfigError("checkpoint.initial_load_in_hf = true needs the folder holding the Hugging Face "
                          "safetensors: set checkpoint.initial_load_path, or model.hf_assets_path (used when "
                          "initial_load_path is unset, as in torchtitan)")
    if t.deterministic and t.seed is None:
        raise ConfigError("training.deterministic = true needs training.seed (else every run draws its own seed)")
    if p.enable_async_tensor_parallel and (p.tensor_parallel_degree < 2 or not c.compile.enable):
        raise ConfigError("parallelism.enable_async_tensor_parallel needs parallelism.tensor_parallel_degree > 1 "
                          "and compile.enable = true (the overlap is made by torch.compile's passes); got "
                          f"tensor_parallel_degree = {p.tensor_parallel_degree}, compile.enable = {c.compile.enable}")
    if v.enable:
        if v.steps == 0 or v.steps < -1:
            raise ConfigError(f"validation.steps = {v.steps}: use a positive number of batches, or -1 for the "
                              "whole split")
        if _task(c) != "lm":  # sequence lengths of a diffusion run come from its image size
            pass
        elif v.seq_len > t.seq_len:
            raise ConfigError(f"validation.seq_len = {v.seq_len} is longer than training.seq_len = {t.seq_len}, "
                              "the length the model's position table is built for")
        if p.context_parallel_degree > 1 and v.seq_len != t.seq_len:
            raise ConfigError(f"validation.seq_len = {v.seq_len} must equal training.seq_len = {t.seq_len} with "
                              "context parallel (both are sharded along the sequence the same way)")
    if c.metrics.enable_wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("metrics.enable_wandb = true, but wandb is not installed: "
                              "pip install 'titan-train[wandb]', or turn the option off")
