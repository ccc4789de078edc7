"""One optimizer step: micro-batches (or a pipeline schedule), loss, clipping, optimizer, LR."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from titan_train.trainer.optim import clips_in_optimizer
from titan_train.trainer.prefetch import to_device


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in float32 (bf16 logits lose too much precision in log-softmax)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1))


@dataclass
class StepResult:
    loss: torch.Tensor        # this rank's mean loss over its micro-batches (0-dim, detached)
    grad_norm: torch.Tensor   # global gradient norm before clipping
    data_time_s: float        # time spent waiting for batches
    tokens: int               # tokens this rank consumed
    lr: float                 # the learning rate this step trained with


class StepRunner:
    """Runs forward/backward over `accum_steps` micro-batches, then clip + optimizer + LR step."""

    def __init__(self, *, parts: list[nn.Module], optimizers: list, schedulers: list, device: torch.device,
                 accum_steps: int, max_norm: float, loss_fn: Callable, clip_fn: Callable,
                 train_context: Callable[[list[torch.Tensor]], contextlib.AbstractContextManager],
                 pipeline=None, after_optimizer_step: Callable[[], None] | None = None,
                 after_backward: Callable[[], None] | None = None, forward_loss: Callable | None = None,
                 tokens_of: Callable[[torch.Tensor], int] | None = None) -> None:
        # set by the trainer: e.g. wait for an async checkpoint to finish copying the parameters
        self.before_optimizer_step: Callable[[], None] | None = None
        self.parts, self.optimizers, self.schedulers = parts, optimizers, schedulers
        self.device, self.accum_steps, self.max_norm = device, accum_steps, max_norm
        self.loss_fn, self.clip_fn, self.train_context = loss_fn, clip_fn, train_context
        self.pipeline = pipeline
        self.after_optimizer_step = after_optimizer_step
        self.after_backward = after_backward  # e.g. MoE load balancing: once per optimizer step
        self.params = [p for m in parts for p in m.parameters() if p.requires_grad]
        # the task's micro-batch: (model, inputs, labels) -> loss; next-token prediction by default
        # (a diffusion run passes its rectified-flow objective and counts its joint sequence tokens)
        self.forward_loss = forward_loss or (lambda model, inputs, labels: loss_fn(model(inputs), labels))
        self.tokens_of = tokens_of or (lambda labels: labels.numel())
        self.clip_in_optimizer = clips_in_optimizer(optimizers)

    def _grad_params(self) -> list[torch.Tensor]:
        """What holds this step's gradients: the parameters, or the persistent bf16 copies whose
        `.grad` MasterAdamW reads (optimizer.fused_casts)."""
        if self.optimizers and all(hasattr(o, "grad_holders") for o in self.optimizers):
            return [t for o in self.optimizers for t in o.grad_holders()]
        return self.params

    def _next_batch(self, it: Iterator) -> tuple[torch.Tensor, torch.Tensor, float]:
        t0 = time.perf_counter()
        inputs, labels = next(it)
        waited = time.perf_counter() - t0
        return to_device(inputs, self.device), to_device(labels, self.device), waited

    def run(self, data: Iterator) -> StepResult:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        data_time, tokens = 0.0, 0
        for _ in range(self.accum_steps):
            inputs, labels, waited = self._next_batch(data)
            data_time += waited
            tokens += self.tokens_of(labels)
            if self.pipeline is not None:
                # inside the train context too: context parallel shards each stage's sequence
                with self.train_context([inputs, labels]):
                    total += self.pipeline.step(inputs, labels)
            else:
                with self.train_context([inputs, labels]):
                    loss = self.forward_loss(self.parts[0], inputs, labels) / self.accum_steps
                    loss.backward()
                loss = loss.detach()
                total += loss.full_tensor() if hasattr(loss, "full_tensor") else loss  # loss-parallel DTensor
        if self.after_backward is not None:
            self.after_backward()
        max_norm = self.max_norm if self.max_norm > 0 else float("inf")
        unscale = None
        if self.clip_in_optimizer and math.isfinite(max_norm):
            # Measure only; the optimizer divides by 1 / clip coefficient as it reads each gradient
            # (torch's coefficient: max_norm / (norm + 1e-6), at most 1).
            grad_norm = self.clip_fn(self._grad_params(), float("inf"))
            unscale = ((grad_norm + 1e-6) / max_norm).clamp(min=1.0)
        else:
            grad_norm = self.clip_fn(self._grad_params(), max_norm)
        lr = self.optimizers[0].param_groups[0]["lr"]
        if self.before_optimizer_step is not None:
            self.before_optimizer_step()
        for opt in self.optimizers:
            if unscale is not None:
                opt.grad_scale = unscale
            try:
                opt.step()
            finally:
                if unscale is not None:
                    del opt.grad_scale
        for sched in self.schedulers:
            sched.step()
        if self.after_optimizer_step is not None:
            self.after_optimizer_step()
        if hasattr(data, "prefetch"):  # the next step's batches, while the GPU finishes this one
            data.prefetch(self.accum_steps)
        if hasattr(data, "take_wait"):
            data_time = data.take_wait()
        return StepResult(total, grad_norm, data_time, tokens, lr)
