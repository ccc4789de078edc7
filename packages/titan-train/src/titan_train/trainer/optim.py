"""Optimizer (no weight decay on norms, biases, embeddings) and warm-up + decay LR schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from titan_parallel import MasterAdamW, compute_copies
from torch import nn


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "AdamW"
    lr: float = 8e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    implementation: str = "fused"


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Norm gains, biases and embedding tables are not shrunk toward zero: it only hurts them.
        if p.ndim < 2 or "norm" in name or "embeddings" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _kernel_flags(impl: str, name: str, params: list[torch.Tensor]) -> dict:
    if impl == "for-loop":
        return {"foreach": False}
    devices = {p.device.type for p in params}
    # Fused Adam(W) on CUDA has DTensor support; fused SGD and the CPU kernels do not: use foreach.
    if impl == "fused" and devices == {"cuda"} and name in ("AdamW", "Adam"):
        return {"fused": True}
    return {"foreach": True}


def clips_in_optimizer(optimizers: list) -> bool:
    """Whether gradient clipping can ride on the optimizers' own kernel: fused Adam(W) divides
    each gradient by its `grad_scale` as it reads it (the hook torch's GradScaler uses), so the
    clip needs no pass of its own over the gradients (a read and a write of every one)."""
    return bool(optimizers) and all(isinstance(o, MasterAdamW) or (
        isinstance(o, torch.optim.Adam | torch.optim.AdamW) and o.defaults.get("fused")) for o in optimizers)


def build_optimizer(model: nn.Module, s: OptimizerSettings) -> torch.optim.Optimizer:
    """One optimizer per model part (pipeline stages hold different parameters)."""
    groups = _param_groups(model, s.weight_decay)
    if compute_copies(model) is not None:  # persistent bf16 copies hold the gradients (optimizer.fused_casts)
        if s.name != "AdamW":
            raise ValueError(f"persistent casts step with AdamW only, not {s.name!r}")
        return MasterAdamW(groups, model, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay)
    flags = _kernel_flags(s.implementation, s.name, [p for g in groups for p in g["params"]])
    if s.name in ("AdamW", "Adam"):
        cls = torch.optim.AdamW if s.name == "AdamW" else torch.optim.Adam
        return cls(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, **flags)
    if s.name == "SGD":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.beta1 if s.beta1 < 1 else 0.0, **flags)
    raise ValueError(f"unknown optimizer {s.name!r}")


@dataclass(frozen=True)
class ScheduleSettings:
    steps: int
    warmup_steps: int = 20
    decay_ratio: float | None = None
    decay_type: str = "linear"
    min_lr_factor: float = 0.0

    def phases(self) -> tuple[int, int, int]:
        """(warm-up, stable, decay) step counts, as torchtitan v0.2 computes them: warm-up is capped
        at `steps`, decay (decay_ratio of the steps) is cut to what warm-up leaves, and the stable
        phase holds one virtual step past the end, so the last step never trains at the minimum."""
        warmup = min(self.warmup_steps, self.steps)
        if self.decay_ratio is None:
            decay = self.steps - warmup
        else:
            decay = min(round(self.steps * self.decay_ratio), self.steps - warmup)
        return warmup, self.steps + 1 - warmup - decay, decay

    def notes(self) -> list[str]:
        """One line per setting the schedule had to adjust (printed at start-up)."""
        out = []
        warmup, _, decay = self.phases()
        if self.warmup_steps > self.steps:
            out.append(f"lr_scheduler.warmup_steps = {self.warmup_steps} exceeds training.steps = {self.steps}: "
                       f"warm-up is capped at {self.steps} steps")
        if self.decay_ratio is not None and decay < round(self.steps * self.decay_ratio):
            out.append(f"lr_scheduler.decay_ratio = {self.decay_ratio} asks for {round(self.steps * self.decay_ratio)} "
                       f"decay steps, but warm-up takes {warmup} of the {self.steps}: decay is cut to {decay} steps "
                       "(no stable phase)")
        return out


def lr_factor(step: int, s: ScheduleSettings) -> float:
    """LR multiplier for optimizer step `step` (1-based): linear warm-up, a stable phase, decay.

    torchtitan v0.2's schedule, step for step: with W warm-up steps step k <= W trains at k / W
    (the peak at step W); then the peak until the decay starts (right after warm-up unless
    decay_ratio sets a shorter WSD decay); then linear / sqrt / cosine decay toward
    lr * min_lr_factor, which a virtual step after the last one would reach.
    """
    warmup, stable, decay = s.phases()
    c = step - 1  # torchtitan counts from 0
    if c < warmup:
        return (c + 1) / warmup
    if c < warmup + stable or decay <= 0:
        return 1.0
    progress = min(1.0, (c + 1 - warmup - stable) / decay)
    if s.decay_type == "linear":
        shape = 1.0 - progress
    elif s.decay_type == "sqrt":
        shape = 1.0 - math.sqrt(progress)
    else:  # cosine
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return s.min_lr_factor + (1.0 - s.min_lr_factor) * shape


def build_lr_scheduler(optimizer: torch.optim.Optimizer, s: ScheduleSettings) -> torch.optim.lr_scheduler.LambdaLR:
    # LambdaLR calls the lambda with 0 at construction and with k after the k-th optimizer step;
    # step k+1 therefore trains with lr_factor(k + 1).
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(k + 1, s))
