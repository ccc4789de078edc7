"""A loss that reaches the parameters' gradients without the model returning it.

The MoE balance loss and DeepSeek's multi-token prediction loss are computed inside the model;
`attach_loss(x, loss)` returns x unchanged and makes backward also send d(loss)/d(loss) = 1 into
`loss`. So pipeline schedules, activation checkpointing and the trainer's loss function see only
the logits, and the extra term's gradient joins theirs in the same backward.
"""

from __future__ import annotations

import torch


class _AttachLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(loss)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (loss,) = ctx.saved_tensors
        return grad, torch.ones_like(loss)


def attach_loss(x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """x, with `loss` (a scalar already weighted) added to what backward differentiates."""
    return _AttachLoss.apply(x, loss)
