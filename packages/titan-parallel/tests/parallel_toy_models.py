"""A small GPT written here, outside the package, to parallelize through the public API only.

Its init_weights() derives each full tensor from (seed, parameter name) and copies it in, so every
parallel layout initializes exactly like one process.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

WRAPPERS = {"_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module"}


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # -1 heads: under TP each rank holds its share of the heads.
        q = self.wq(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Experts(nn.Module):
    """n_experts SwiGLU experts in 3-D weights: what titan_parallel.apply_ep shards. forward takes
    rows sorted by expert and each expert's row count; compute() does the math on given weights."""

    def __init__(self, dim: int, hidden: int, n_experts: int) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.w3 = nn.Parameter(torch.empty(n_experts, hidden, dim))

    def compute(self, x, counts, w1, w2, w3):
        out, start = [], 0
        for e, n in enumerate(counts.tolist()):
            rows = x[start:start + n]
            out.append((F.silu(rows @ w1[e].t()) * (rows @ w3[e].t())) @ w2[e].t())
            start += n
        return torch.cat(out)

    def forward(self, x, counts):
        return self.compute(x, counts, self.w1, self.w2, self.w3)


class MoE(nn.Module):
    """Top-k softmax routing to Experts; `closed` experts are never chosen (empty groups)."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, closed: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.experts = Experts(dim, hidden, n_experts)
        self.closed = closed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, x = x.shape, x.reshape(-1, x.shape[-1])
        logits = self.gate(x).float()
        if self.closed:
            logits[:, list(self.closed)] = float("-inf")
        weights, chosen = logits.softmax(-1).topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        order = chosen.flatten().argsort(stable=True)
        counts = torch.bincount(chosen.flatten(), minlength=self.experts.n_experts)
        token = order // self.top_k
        out = self.experts(x[token], counts) * weights.flatten()[order, None]
        return torch.zeros_like(x).index_add_(0, token, out.to(x.dtype)).reshape(shape)


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, hidden: int, n_experts: int = 0,
                 top_k: int = 2, closed: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(dim)
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.ffn_norm = nn.RMSNorm(dim)
        if n_experts:
            self.moe = MoE(dim, hidden, n_experts, top_k, closed)
        else:
            self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        ffn = self.moe if "moe" in self._modules else self.feed_forward
        return x + ffn(self.ffn_norm(x))


class ToyGPT(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 64, n_layers: int = 2, n_heads: int = 4,
                 n_kv_heads: int = 2, hidden: int = 128, seed: int = 0, n_experts: int = 0, top_k: int = 2,
                 closed: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.seed = seed
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim, n_heads, n_kv_heads, hidden, n_experts, top_k, closed)
                                    for _ in range(n_layers))
        self.norm = nn.RMSNorm(dim)
        self.output = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h))

    def init_weights(self) -> None:
        for name, p in self.named_parameters():
            name = ".".join(s for s in name.split(".") if s not in WRAPPERS)
            g = torch.Generator().manual_seed(self.seed * 7919 + zlib.crc32(name.encode()))
            if name.endswith("norm.weight"):
                full = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            else:
                full = torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5)
            p.copy_(full.to(device=p.device, dtype=p.dtype))


def tp_plan(*, sequence_parallel: bool = True, loss_parallel: bool = True, moe: bool = False) -> dict:
    """ToyGPT's TP plan, in torch ParallelStyles; with SP the norms shard the sequence dim. moe:
    the MoE blocks keep their sequence shard (each rank routes its own tokens; the experts are for
    expert parallel / expert FSDP), the gate replicated like a sequence-parallel norm."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    seq = Shard(1) if sequence_parallel else Replicate()
    plan = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
        "output": ColwiseParallel(input_layouts=seq,
                                  output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                  use_local_output=not loss_parallel),
        "layers.*.attention.wq": ColwiseParallel(),
        "layers.*.attention.wk": ColwiseParallel(),
        "layers.*.attention.wv": ColwiseParallel(),
        "layers.*.attention.wo": RowwiseParallel(output_layouts=seq),
        "layers.*.feed_forward.w1": ColwiseParallel(),
        "layers.*.feed_forward.w3": ColwiseParallel(),
        "layers.*.feed_forward.w2": RowwiseParallel(output_layouts=seq),
    }
    if sequence_parallel:
        plan.update({
            "norm": SequenceParallel(),
            "layers.*.attention_norm": SequenceParallel(),
            "layers.*.ffn_norm": SequenceParallel(),
            "layers.*.attention": PrepareModuleInput(input_layouts=(Shard(1),),
                                                     desired_input_layouts=(Replicate(),)),
            "layers.*.feed_forward": PrepareModuleInput(input_layouts=(Shard(1),),
                                                        desired_input_layouts=(Replicate(),)),
        })
    if moe:
        for key in [k for k in plan if k.startswith("layers.*.feed_forward")]:
            del plan[key]
        plan["layers.*.moe"] = PrepareModuleInput(  # the residual stream is local
            input_layouts=(Shard(1),), desired_input_layouts=(Shard(1),), use_local_output=True)
        plan["layers.*.moe.gate"] = SequenceParallel(sequence_dim=0, use_local_output=True)
    return plan


def meta_model(**kwargs) -> ToyGPT:
    with torch.device("meta"):
        return ToyGPT(**kwargs)


def reference_model(device: str = "cpu", **kwargs) -> ToyGPT:
    model = ToyGPT(**kwargs).to(device)
    with torch.no_grad():
        model.init_weights()
    return model


def batch(step: int, n: int = 4, seq: int = 16, vocab: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of a step: same on every rank; data-parallel ranks take their rows."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, vocab, (n, seq + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered if it is a DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def make_optimizer(name: str, params, lr: float = 1e-2) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.5, momentum=0.9)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.1)


def compare_training(model: nn.Module, ref: nn.Module, *, optimizer: str, dp_rank: int = 0,
                     dp_size: int = 1, steps: int = 2, loss_parallel: bool = False,
                     after_step=None, device: str = "cpu") -> dict:
    """Train `model` (parallel, fed rows dp_rank of dp_size) and `ref` (one process, whole batch)
    side by side. Returns the worst relative differences of loss, gradients and parameters, and
    whether the initial parameters were bit-identical."""
    import contextlib

    import torch.distributed as dist
    from torch.distributed.tensor.parallel import loss_parallel as loss_parallel_ctx

    def max_rel(pairs):
        return max(((full(a) - b).norm() / b.norm().clamp_min(1e-12)).item() for a, b in pairs)

    params, ref_params = list(model.parameters()), list(ref.parameters())
    out = {"same_init": all(torch.equal(full(p).detach(), q.detach()) for p, q in zip(params, ref_params)),
           "loss": 0.0, "grad": 0.0, "param": 0.0, "losses": []}
    opt, ref_opt = make_optimizer(optimizer, params), make_optimizer(optimizer, ref_params)
    ctx = loss_parallel_ctx if loss_parallel else contextlib.nullcontext
    for step in range(steps):
        x, y = (t.to(device) for t in batch(step))
        rows = slice(dp_rank * x.shape[0] // dp_size, (dp_rank + 1) * x.shape[0] // dp_size)
        with ctx():
            loss = loss_fn(model(x[rows]), y[rows])
            loss.backward()
        ref_loss = loss_fn(ref(x), y)
        ref_loss.backward()
        mean = full(loss).detach().clone()
        dist.all_reduce(mean)
        mean /= dist.get_world_size()  # ranks that share rows hold the same loss
        out["losses"].append((mean.item(), ref_loss.item()))
        out["loss"] = max(out["loss"], abs(mean.item() - ref_loss.item()) / abs(ref_loss.item()))
        out["grad"] = max(out["grad"], max_rel((p.grad, q.grad) for p, q in zip(params, ref_params)))
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
        if after_step is not None:
            after_step(model)
        out["param"] = max(out["param"], max_rel(zip(params, ref_params)))
    return out
