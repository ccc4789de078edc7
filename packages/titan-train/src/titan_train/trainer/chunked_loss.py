"""Output projection and cross-entropy in chunks of tokens, gradients made in the forward pass.

With a 128k-200k vocabulary the logits of one micro-batch ([tokens, vocab] in bf16) and their
gradient are the largest tensors of a step (6.6 GB each for 16,384 tokens x 201,088). Here the
head computes, chunk by chunk, the logits in float32, the loss and at once d loss / d logits,
turns that into the chunk's gradients for the hidden states and the weight, and frees the logits;
backward only scales what forward made. Same FLOPs as the plain head (one matmul forward, two
for the gradients), peak memory of one chunk instead of all logits.

The head must run inside the output module's forward (FSDP and the one-GPU casts hand it the
compute copy of the weight only there), so the trainer patches that module's forward: with
labels pending it returns the mean loss, without (validation, inference) it is the plain linear.
"""

from __future__ import annotations

import types

import torch
from torch import nn

IGNORE = -100  # F.cross_entropy's default ignore_index


def _chunk(logits: torch.Tensor, target: torch.Tensor, scale: torch.Tensor):
    """(sum of the chunk's losses, d(mean loss)/d logits in the logits' dtype) in float32 math."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    valid = target != IGNORE
    safe = torch.where(valid, target, 0)
    picked = x.gather(-1, safe[:, None]).squeeze(-1)
    loss = torch.where(valid, lse - picked, 0.0).sum()
    cols = torch.arange(x.shape[-1], device=x.device)
    grad = torch.exp(x - lse[:, None]) - (cols[None, :] == safe[:, None]).float()  # softmax - one-hot
    grad = grad * torch.where(valid, scale, 0.0)[:, None]
    return loss, grad.to(logits.dtype)


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b in acc's (float32) dtype. On CUDA the GEMM adds a bf16 product into the float32
    sum itself (cuBLAS with beta = 1): no bf16 product, float32 copy and sum in memory per chunk."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda:
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:  # the CPU has no mixed-dtype addmm
        acc += (a @ b).to(acc.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int, step):
        n_valid = (target != IGNORE).sum().clamp(min=1)
        scale = 1.0 / n_valid.float()
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk], target[start:start + chunk]
            loss, dlogits = step(hc @ weight.t(), tc, scale)
            total += loss
            torch.mm(dlogits, weight, out=grad_h[start:start + chunk])
            _accumulate(grad_w, dlogits.t(), hc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(ctx.weight_dtype), None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, chunk: int = 2048,
                         step=_chunk) -> torch.Tensor:
    """mean cross_entropy(h @ weight.T, target) over targets != -100; h [..., dim], target [...]."""
    return _LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), weight, target.reshape(-1), chunk, step)


def attach_chunked_head(head: nn.Linear, *, chunk: int, compile_chunk: bool = False) -> ChunkedHead:
    """Patch `head` (a bias-free nn.Linear) in place; returns the handle the step sets labels on."""
    return ChunkedHead(head, chunk, torch.compile(_chunk, dynamic=False) if compile_chunk else _chunk)


class ChunkedHead:
    def __init__(self, head: nn.Linear, chunk: int, step) -> None:
        if type(head) is not nn.Linear or head.bias is not None:
            raise TypeError(f"the chunked loss needs a bias-free nn.Linear output, got {head!r}")
        self.labels: torch.Tensor | None = None
        plain = head.forward

        def forward(module: nn.Linear, h: torch.Tensor) -> torch.Tensor:
            labels, self.labels = self.labels, None  # used once: the main head's call
            if labels is None:
                return plain(h)
            return linear_cross_entropy(h, module.weight, labels, chunk=chunk, step=step)

        head.forward = types.MethodType(forward, head)

    def forward_loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The step's micro-batch: the model's output is the mean loss itself."""
        self.labels = labels
        try:
            return model(inputs)
        finally:
            self.labels = None
