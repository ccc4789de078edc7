"""AdamW on float32 master weights whose gradients live on their persistent bf16 compute copies.

One pass per parameter reads the bf16 gradient, the float32 weight and both float32 states, and
writes the weight, the states and the new bf16 copy: torch's fused AdamW would need a float32
gradient (a cast pass) and a cast pass to make the copy. On CUDA the update is one compiled
(Inductor) kernel per parameter; elsewhere it runs eagerly with the same arithmetic.

The state (`step`, `exp_avg`, `exp_avg_sq` per parameter, float32, keyed by the float32
parameters) is torch.optim.AdamW's: checkpoints load into either optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from titan_parallel.errors import ParallelConfigError
from titan_parallel.master_weights import ComputeCopies, compute_copies


def _update(params, grads, exp_avgs, exp_avg_sqs, copies, steps, lr, grad_scale,
            beta1: float, beta2: float, weight_decay: float, eps: float) -> None:
    # the arithmetic of torch's AdamW (decoupled weight decay, bias-corrected moments)
    for p, g, m, v, c, step in zip(params, grads, exp_avgs, exp_avg_sqs, copies, steps):
        g = g.to(m.dtype) / grad_scale  # float32 states; a parameter already in bf16 has bf16 ones
        step.add_(1)
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - beta1 ** step
        bias2_sqrt = (1 - beta2 ** step).sqrt()
        p.sub_(m / (v.sqrt() / bias2_sqrt + eps) * (lr / bias1))
        c.copy_(p)


class MasterAdamW(torch.optim.AdamW):
    """AdamW for a model under apply_mixed_precision(..., persistent=True).

    Takes the model's float32 parameters (or param groups) like torch.optim.AdamW, plus the model
    (or its ComputeCopies) to find each parameter's copy. Set `grad_scale` (a 0-d tensor) before
    `step()` to divide every gradient by it, as torch's fused kernels do (gradient clipping).
    `grad_holders()` lists the copies that hold gradients, for norms and clipping. compile: run
    the update as compiled kernels (default: on CUDA; eager elsewhere, same arithmetic).
    """

    def __init__(self, params, model: nn.Module | ComputeCopies, *, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 compile: bool | None = None):
        copies = model if isinstance(model, ComputeCopies) else compute_copies(model)
        if copies is None:
            raise ParallelConfigError("MasterAdamW needs a model under apply_mixed_precision(..., persistent=True): "
                                      "its gradients are on the persistent bf16 copies")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
        self.copies = copies
        self._lr: dict[torch.device, torch.Tensor] = {}
        self._compile = compile  # None: on CUDA only
        self._compiled = None  # dynamo keeps a graph per parameter list (one per group and device)

    def _kernel(self, device: torch.device, eager: bool):
        if eager or not (device.type == "cuda" if self._compile is None else self._compile):
            return _update
        if self._compiled is None:
            self._compiled = torch.compile(_update, fullgraph=True, dynamic=False)
        return self._compiled

    def grad_holders(self) -> list[torch.Tensor]:
        """Every tensor whose `.grad` step() reads: the copies, and parameters without one (already
        in the compute dtype, or used outside the hooked units) that hold a gradient themselves."""
        return [h for group in self.param_groups for p in group["params"] if (h := self._holder(p)) is not None]

    def _holder(self, p: torch.Tensor) -> torch.Tensor | None:
        """The tensor whose `.grad` is `p`'s gradient: its copy, or `p` itself; None without one."""
        c = self.copies.copy_of(p)
        if c is not None and c.grad is not None:
            if p.grad is not None:
                raise ParallelConfigError("a parameter under persistent casts has a float32 .grad as well as "
                                          "its copy's: something bypassed the copies")
            return c
        return p if p.grad is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.copies.zero_grad()

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ParallelConfigError("MasterAdamW.step takes no closure")
        scale = getattr(self, "grad_scale", None)
        for group in self.param_groups:
            by_device: dict[torch.device, list] = {}
            eager = False
            for p in group["params"]:
                holder = self._holder(p)
                if holder is None:
                    continue
                c = self.copies.copy_of(p)
                if c is None:  # a float32 gradient before the first forward (DCP initializing the state)
                    c, eager = p.detach().to(self.copies.dtype), True
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif state["step"].device != p.device:  # torch's non-fused AdamW keeps it on the CPU
                    state["step"] = state["step"].to(p.device)
                lists = by_device.setdefault(p.device, [[], [], [], [], [], []])
                for i, t in enumerate((p, holder.grad, state["exp_avg"], state["exp_avg_sq"], c, state["step"])):
                    lists[i].append(t)
            beta1, beta2 = group["betas"]
            for device, lists in by_device.items():
                lr = self._lr.get(device)
                if lr is None:
                    lr = self._lr[device] = torch.zeros((), dtype=torch.float32, device=device)
                lr.fill_(group["lr"])  # a tensor: a new learning rate is no new graph
                div = scale.float().to(device) if scale is not None else torch.ones((), device=device)
                self._kernel(device, eager)(*lists, lr, div, beta1, beta2, group["weight_decay"], group["eps"])
                self.copies.mark_written(lists[0])
        return None
