"""Peak GPU memory of a Titan job from its config, before anything is built or allocated.

    from titan_train.config import build_config
    from titan_train.memory import estimate, check_fits

    est = estimate(build_config(["--config", "llama3_70b"]), world_size=256)
    print(est.table())
    check_fits(est, gpu_gib=80)        # ConfigError with the breakdown when it cannot fit

Parameter shards come from the trainer's own parallelize_part on a meta model under a fake
process group (sizes.py); activations from a per-layer formula checked against measurements
(activations.py, measure.py, calibrate.py); the peak composition is in estimate.py.
"""

from __future__ import annotations

import torch

from titan_train.config import JobConfig, check_config
from titan_train.errors import ConfigError
from titan_train.memory.estimate import (
    FRAGMENTATION,
    RUNTIME_OVERHEAD_GIB,
    MemoryEstimate,
    estimate_layout,
)
from titan_train.memory.layout import Layout, plan
from titan_train.memory.sizes import ParamSizes, param_sizes


def describe(layout: Layout) -> str:
    degrees = [f"{n} {v}" for n, v in (("DDP" if layout.ddp else "HSDP replicas", layout.dp_replicate),
                                         ("FSDP", layout.dp_shard), ("CP", layout.cp), ("TP", layout.tp),
                                         ("PP", layout.pp), ("EP", layout.run.dims.ep)) if v > 1]
    ac = f"{layout.ac_mode} {layout.ac_option}" if layout.ac_mode in ("selective", "memory_budget") else layout.ac_mode
    shape = layout.shape
    bits = [f"{layout.model_name} {shape.n_layers} layers dim {shape.dim} vocab {shape.vocab_size}",
            f"{layout.world_size} GPU(s)" + (f": {' x '.join(degrees)}" if degrees else ""),
            f"batch {layout.local_batch} x seq {layout.seq_len}", f"AC {ac}"]
    if layout.compile_model:
        bits.append("compile")
    if layout.float8:
        bits.append("float8" + (" all-gather" if layout.float8_all_gather else ""))
    if layout.schedule:
        bits.append(f"{layout.schedule} microbatch {layout.microbatch}")
    return ", ".join(bits)


def estimate(cfg: JobConfig, world_size: int) -> MemoryEstimate:
    """Predicted peak memory per GPU for `cfg` on `world_size` GPUs (ConfigError for a layout
    the trainer would refuse). Runs on CPU in about a second, also for 405B on 512 GPUs."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a positive integer, got {world_size!r}")
    check_config(cfg)
    layout = plan(cfg, world_size)
    est = estimate_layout(layout, param_sizes(cfg, layout))
    est.layout = describe(layout)
    est.notes.append(f"vocabulary {layout.shape.vocab_size} from {layout.vocab_note}")
    return est


def check_fits(estimate: MemoryEstimate, gpu_gib: float) -> None:
    """Raise ConfigError, with the breakdown and what to change, when the estimate exceeds
    `gpu_gib` per GPU."""
    if estimate.total <= gpu_gib:
        return
    raise ConfigError(
        f"this configuration needs about {estimate.total:.1f} GiB per GPU but the GPU has {gpu_gib:.0f} GiB.\n"
        f"{estimate.table()}\n"
        "To fit: activation_checkpoint.mode = 'selective' or 'full', a smaller training.local_batch_size "
        "(keep the global batch with training.global_batch_size: gradient accumulation), more FSDP ranks "
        "(parallelism.data_parallel_shard_degree), tensor or pipeline parallelism, or "
        "memory_estimation.enable = false to try anyway.")


def precheck(cfg: JobConfig, world_size: int, device: torch.device) -> str | None:
    """The trainer's hook (memory_estimation.enable): the estimate's table, or None when the
    estimate is off or there is no GPU; ConfigError when the job cannot fit. The GPU size is
    memory_estimation.gpu_memory_gib, or the device's total memory when that is 0."""
    if not cfg.memory_estimation.enable:
        return None
    gpu_gib = cfg.memory_estimation.gpu_memory_gib
    if gpu_gib <= 0:
        if device.type != "cuda":
            return None
        gpu_gib = torch.cuda.get_device_properties(device).total_memory / 1024**3
    est = estimate(cfg, world_size)
    check_fits(est, gpu_gib)
    return est.table() + f"\n  fits in {gpu_gib:.0f} GiB per GPU"


__all__ = ["FRAGMENTATION", "RUNTIME_OVERHEAD_GIB", "Layout", "MemoryEstimate", "ParamSizes", "check_fits",
           "describe", "estimate", "estimate_layout", "plan", "precheck"]
