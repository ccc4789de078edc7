"""A Run: the objects one training job works with, and the few things it does besides stepping."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from titan_mesh import dist_mean, dist_reduce_tensor
from torch import nn

from titan_train.config import JobConfig
from titan_train.trainer.hardware import Peak
from titan_train.trainer.metrics import MetricsLogger
from titan_train.trainer.state import TrainState
from titan_train.trainer.step import StepRunner


@dataclass
class Run:
    cfg: JobConfig
    device: torch.device
    world_size: int
    parts: list[nn.Module]
    optimizers: list
    schedulers: list
    loader: Any
    step_runner: StepRunner
    metrics: MetricsLogger
    state: TrainState
    loss_mesh: Any                       # mesh to average the loss over (dp x cp), or None
    peak: Peak
    plan: Any = None                     # titan_train.plan.RunPlan: the run's layout and model
    pp_mesh: Any = None
    ckpt: Any = None                     # titan_ckpt.CheckpointManager, or None
    states: dict = field(default_factory=dict)
    export: Callable[[int], None] | None = None  # the final weights (export/, hf/), after the last step
    schedule: Any = None                 # the LR schedule's ScheduleSettings
    dims: Any = None                     # titan_mesh.ParallelDims: close() destroys its groups
    moe: Any = None                      # trainer.moe.LoadBalance of a mixture of experts, or None
    mtp: Any = None                      # trainer.mtp.MTPLoss of multi-token prediction, or None
    ema: Any = None                      # diffusion.ema.EMA of the weights (saved as "ema"), or None
    samples_per_token: float = 0.0       # a diffusion run logs images/s: 1 / joint tokens per image
    validator: Callable[[], float] | None = None
    profiler: Callable[[], Any] = contextlib.nullcontext
    after_first_step: Callable[[], None] | None = None   # e.g. lower the collective timeout
    after_training: Callable[[], None] | None = None     # undo it (a caller's group outlives the run)

    def metric_record(self, step: int, loss: float, grad_norm: float, lr: float, window_tokens: int,
                      elapsed: float, data_s: float) -> dict[str, Any]:
        # Tokens per second per device: the whole job's tokens over all devices, so the number is
        # comparable across layouts (TP/PP/CP ranks share tokens; DP ranks each bring their own).
        batch = self.plan.batch
        steps_in_window = max(1, window_tokens // max(1, batch.local_tokens_per_step))
        tps = batch.tokens_per_step * steps_in_window / elapsed / self.world_size
        record: dict[str, Any] = {"step": step, "loss": loss, "grad_norm": grad_norm,
                                  "lr": lr, "tokens_per_second": tps,
                                  "step_time_s": elapsed / steps_in_window,
                                  "data_loading_pct": 100.0 * data_s / elapsed}
        if self.samples_per_token:
            record["images_per_second"] = tps * self.samples_per_token
        tflops = tps * self.plan.flops_per_token / 1e12
        record["tflops"] = tflops
        # against the bf16 peak as torchtitan reports it, float8 runs too; those also against the fp8 peak
        if self.peak.bf16:
            record["mfu"] = 100.0 * tflops * 1e12 / self.peak.bf16
        if self.plan.float8 is not None and self.peak.fp8:
            record["mfu_fp8_peak"] = 100.0 * tflops * 1e12 / self.peak.fp8
        if self.moe is not None:
            record.update(self.moe.metrics())
        if self.mtp is not None:
            record.update(self.mtp.metrics())
        return record

    def global_loss(self, local: torch.Tensor) -> torch.Tensor:
        """The step's mean loss over all tokens: summed over pipeline stages (only the last one
        holds it), then averaged over data-parallel and context-parallel ranks. A 0-dim tensor
        whose collectives are queued, not waited for: read it when the value is needed."""
        pp_mesh = self.pp_mesh
        value = dist_reduce_tensor(local, "sum", pp_mesh) if pp_mesh is not None else local
        return dist_reduce_tensor(value, "mean", self.loss_mesh)

    def validate_now(self, step: int) -> bool:
        return self.validator is not None and step % self.cfg.validation.freq == 0

    def validate(self) -> float:
        assert self.validator is not None
        for m in self.parts:
            m.eval()
        try:
            return self.validator()
        finally:
            for m in self.parts:
                m.train()

    def save(self, step: int, *, force: bool = False) -> None:
        self.ckpt.save(step, self.states, force=force)

    def close(self) -> None:
        """Finish pending saves and release what the run holds: the checkpoint manager's threads,
        buffers, writer process and process group, the metric writers, the mesh's process groups."""
        try:
            if self.ckpt is not None:
                self.ckpt.close()
        finally:
            self.metrics.close()
            if self.dims is not None:
                self.dims.destroy_groups()


def make_validator(cfg: JobConfig, build_loader: Callable[[], Any], model: nn.Module, loss_fn: Callable,
                   device: torch.device, loss_mesh, train_context) -> Callable[[], float]:
    steps = cfg.validation.steps

    @torch.no_grad()
    def validate() -> float:
        total, count = 0.0, 0
        for i, (inputs, labels) in enumerate(build_loader()):
            if 0 <= steps <= i:
                break
            inputs, labels = inputs.to(device), labels.to(device)
            with train_context([inputs, labels]):
                loss = loss_fn(model(inputs), labels)
            loss = loss.full_tensor() if hasattr(loss, "full_tensor") else loss
            total += float(loss)
            count += 1
        return dist_mean(torch.tensor(total / max(count, 1)), loss_mesh)

    return validate


def dump_path(cfg: JobConfig, sub: str) -> Path:
    return Path(cfg.job.dump_folder).expanduser() / sub
