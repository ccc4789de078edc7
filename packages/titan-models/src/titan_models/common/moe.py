"""Mixture of experts: a token-choice top-k router, grouped experts, shared experts, and the MoE
layer that dispatches tokens to experts and combines their outputs (no torch.distributed here:
expert parallel wraps `GroupedExperts.forward` from titan-parallel, see apply_ep).

    x [T, D] -> router -> (scores [T, k], experts [T, k], counts [E])
      -> tokens sorted by expert (stable) -> experts(x_sorted, counts) -> back in token order
      -> each token's k outputs summed with its scores (+ shared experts on every token)

Experts compute in the weights' dtype (float32 weights give float32 math, so one process and every
parallel layout agree to float32 precision); torch.compile needs bf16 weights for grouped GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from titan_models.common.extra_loss import attach_loss
from titan_models.common.mlp import FeedForward
from titan_models.errors import ModelConfigError
from torch import nn

SCORE_FUNCS = ("softmax", "sigmoid")
GROUP_SCORES = ("top2_sum", "max")
ACTIVATIONS = ("swiglu", "clamped_swiglu")


@dataclass(frozen=True)
class MoEShape:
    """One MoE layer's experts and routing.

    score_func: softmax (Qwen 3, DeepSeek 16B) or sigmoid (DeepSeek V3, Llama 4) over the router
    logits, in float32. route_norm: renormalize the k selected scores to sum to 1. route_scale:
    multiply them. n_groups / topk_groups: group-limited routing (DeepSeek V3: experts in 8 groups,
    tokens choose within the 4 groups whose two best scores sum highest; group_score="max": ranked by
    their best score, as DeepSeek V2's group_limited_greedy). score_before_experts:
    scale the expert inputs instead of outputs (Llama 4). load_balance_coeff: None, or the step of
    the aux-loss-free bias update (DeepSeek V3: 1e-3), which needs the expert_bias buffer. aux_loss
    (alpha): the sequence-wise balance loss weight (DeepSeek V3 eq. 17-20), 0 = off.
    """

    n_experts: int
    top_k: int
    hidden_dim: int                  # each expert's SwiGLU width
    n_shared_experts: int = 0        # shared experts: one SwiGLU of n_shared x hidden_dim
    score_func: str = "softmax"
    route_norm: bool = True
    route_scale: float = 1.0
    n_groups: int = 1
    topk_groups: int = 1
    group_score: str = "top2_sum"    # "top2_sum" (DeepSeek V3) | "max" (DeepSeek V2)
    gate_bias: bool = False
    score_before_experts: bool = False
    load_balance_coeff: float | None = None
    aux_loss: float = 0.0
    # GPT-OSS experts: biases on every projection, and the clamped SwiGLU
    # (up + 1) * g * sigmoid(alpha g) with g = min(gate, limit), up clamped to [-limit, limit].
    experts_bias: bool = False
    activation: str = "swiglu"       # "swiglu" | "clamped_swiglu"
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702

    def problems(self, dim: int) -> list[str]:
        p = []
        if self.score_func not in SCORE_FUNCS:
            p.append(f"score_func={self.score_func!r} is not one of {SCORE_FUNCS}")
        if not 1 <= self.top_k <= self.n_experts:
            p.append(f"top_k={self.top_k} must be within 1..n_experts={self.n_experts}")
        if self.activation not in ACTIVATIONS:
            p.append(f"activation={self.activation!r} is not one of {ACTIVATIONS}")
        if self.group_score not in GROUP_SCORES:
            p.append(f"group_score={self.group_score!r} is not one of {GROUP_SCORES}")
        if self.n_experts % self.n_groups:
            p.append(f"n_experts={self.n_experts} is not divisible by n_groups={self.n_groups}")
        elif self.n_groups > 1 and not (1 <= self.topk_groups <= self.n_groups
                                        and self.top_k <= self.topk_groups * self.n_experts // self.n_groups):
            p.append(f"topk_groups={self.topk_groups} of n_groups={self.n_groups} leaves fewer than top_k="
                     f"{self.top_k} experts to choose from")
        # torch._grouped_mm needs 16-byte row strides: dims a multiple of 8 keep bf16 and fp32 aligned
        for name, value in (("dim", dim), ("moe hidden_dim", self.hidden_dim)):
            if value % 8:
                p.append(f"{name}={value} must be a multiple of 8 for grouped GEMMs (16-byte rows)")
        return p


class TokenChoiceRouter(nn.Module):
    """gate(x) -> scores in float32 -> top-k experts per token (expert_bias shifts the choice only)."""

    def __init__(self, dim: int, s: MoEShape) -> None:
        super().__init__()
        self.s = s
        self.gate = nn.Linear(dim, s.n_experts, bias=s.gate_bias)

    def forward(self, x: torch.Tensor, expert_bias: torch.Tensor | None = None):
        """x [T, D] -> (scores [T, k] float32, experts [T, k] int64, all scores [T, E] float32)."""
        s = self.s
        logits = self.gate(x).float()
        scores = torch.sigmoid(logits) if s.score_func == "sigmoid" else F.softmax(logits, dim=-1)
        choice = scores if expert_bias is None else scores + expert_bias
        if s.n_groups > 1:
            choice = self._limit_groups(choice)
        experts = torch.topk(choice, s.top_k, dim=-1).indices
        top = scores.gather(-1, experts)  # the unbiased scores of the chosen experts
        if s.route_norm:
            top = top / (top.sum(dim=-1, keepdim=True) + 1e-20)
        return top * s.route_scale, experts, scores

    def _limit_groups(self, choice: torch.Tensor) -> torch.Tensor:
        """Keep the topk_groups groups whose best two scores sum highest (or whose best score is
        highest); the others' experts can't be chosen."""
        s = self.s
        grouped = choice.unflatten(-1, (s.n_groups, -1))
        if s.group_score == "max":
            best = grouped.max(dim=-1).values
        else:
            best = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)  # [T, n_groups]
        keep = torch.zeros_like(best, dtype=torch.bool).scatter_(-1, best.topk(s.topk_groups, dim=-1).indices, True)
        return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(-2)


def _rows_bias(b: torch.Tensor | None, counts: torch.Tensor, rows: int) -> torch.Tensor | float:
    """Each row's expert's bias ([rows, n]) from b [E, n] and the rows per expert, or 0."""
    if b is None:
        return 0.0
    expert = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=rows)
    # A one-hot matmul rather than b[expert]: the indexing's backward is a sort-based index_put
    # (110 ms of a 460 ms GPT-OSS step on an H200); the matmul's is onehot^T @ grad, exact (one
    # nonzero per row) and deterministic.
    return F.one_hot(expert, counts.numel()).to(b.dtype) @ b


def _gate(g: torch.Tensor, u: torch.Tensor, act) -> torch.Tensor:
    if act is None:
        return F.silu(g) * u
    limit, alpha = act  # GPT-OSS's clamped SwiGLU
    g = g.clamp(max=limit)
    return (u.clamp(-limit, limit) + 1) * g * torch.sigmoid(alpha * g)


def grouped_swiglu(x: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                   w3: torch.Tensor, b1=None, b2=None, b3=None, *, loop: bool = False,
                   act: tuple[float, float] | None = None) -> torch.Tensor:
    """Each expert's SwiGLU on its rows of x: x [N, D] sorted by expert, counts [E] (sum N);
    w1, w3 [E, H, D], w2 [E, D, H]; optional biases b1, b3 [E, H], b2 [E, D]; act: None for
    silu(gate) * up, or (limit, alpha) for the clamped variant. One grouped GEMM per projection
    (torch._grouped_mm, int32 offsets), or a loop over experts (loop=True: the reference, and for
    torch builds without grouped GEMMs). Computes in the weights' dtype."""
    if x.dtype != w1.dtype:
        x = x.to(w1.dtype)
    if loop or not hasattr(torch, "_grouped_mm"):
        out, start = [], 0
        for e, n in enumerate(counts.tolist()):
            rows = x[start:start + n]
            g, u = rows @ w1[e].t(), rows @ w3[e].t()
            if b1 is not None:
                g, u = g + b1[e], u + b3[e]
            y = _gate(g, u, act) @ w2[e].t()
            out.append(y + b2[e] if b2 is not None else y)
            start += n
        return torch.cat(out) if out else x.new_zeros(0, w2.shape[1])
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    n = x.shape[0]
    g = torch._grouped_mm(x, w1.transpose(-2, -1), offs=offs) + _rows_bias(b1, counts, n)
    u = torch._grouped_mm(x, w3.transpose(-2, -1), offs=offs) + _rows_bias(b3, counts, n)
    return torch._grouped_mm(_gate(g, u, act), w2.transpose(-2, -1), offs=offs) + _rows_bias(b2, counts, n)


class GroupedExperts(nn.Module):
    """n_experts SwiGLU experts held as 3-D weights: w1, w3 [E, H, D], w2 [E, D, H] (and, with
    bias, b1, b3 [E, H], b2 [E, D]: every parameter has the experts on dim 0).

    forward(x_sorted [N, D], counts [E]) -> [N, D]: rows of x grouped by expert, in expert order.
    Expert parallel replaces this forward (titan_parallel.apply_ep) by one that sends each row to
    the rank holding its expert, runs `compute` there on the local experts, and sends it back.
    """

    def __init__(self, dim: int, hidden_dim: int, n_experts: int, *, bias: bool = False,
                 clamp: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, hidden_dim, dim))
        if bias:
            self.b1 = nn.Parameter(torch.empty(n_experts, hidden_dim))
            self.b2 = nn.Parameter(torch.empty(n_experts, dim))
            self.b3 = nn.Parameter(torch.empty(n_experts, hidden_dim))
        self.clamp = clamp  # (limit, alpha): GPT-OSS's clamped SwiGLU; None: silu(gate) * up
        self.loop = False  # True: a loop over experts instead of grouped GEMMs (tests, debugging)

    def compute(self, x: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                w3: torch.Tensor, b1=None, b2=None, b3=None) -> torch.Tensor:
        return grouped_swiglu(x, counts, w1, w2, w3, b1, b2, b3, loop=self.loop, act=self.clamp)

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        biases = (self.b1, self.b2, self.b3) if hasattr(self, "b1") else ()
        return self.compute(x, counts, self.w1, self.w2, self.w3, *biases)


class MoE(nn.Module):
    """A MoE feed-forward: router, grouped experts, optional shared experts, load-balance state.

    Buffers: `tokens_per_expert` [E] (float32, not saved): tokens routed to each expert in
    training forwards since the last balance update (not counted again when activation
    checkpointing recomputes a forward during backward); `expert_bias` [E] (float32, saved): added
    to the scores for the choice only; the trainer moves it toward balance once per optimizer step
    when load_balance_coeff is set (see `balance_update`), a checkpoint may bring it, else zeros.
    """

    def __init__(self, dim: int, s: MoEShape) -> None:
        super().__init__()
        problems = s.problems(dim)
        if problems:
            raise ModelConfigError("invalid MoE arguments: " + "; ".join(problems))
        self.s = s
        self.router = TokenChoiceRouter(dim, s)
        self.experts = GroupedExperts(dim, s.hidden_dim, s.n_experts, bias=s.experts_bias,
                                      clamp=(s.swiglu_limit, s.swiglu_alpha) if s.activation == "clamped_swiglu" else None)
        self.shared_experts = FeedForward(dim, s.hidden_dim * s.n_shared_experts) if s.n_shared_experts else None
        self.register_buffer("tokens_per_expert", torch.zeros(s.n_experts), persistent=False)
        # Always present (zeros when balancing is off), so checkpoints load whatever the setting.
        self.register_buffer("expert_bias", torch.zeros(s.n_experts), persistent=True)
        self.aux_scale = 1.0  # the trainer's loss scale (1 / gradient-accumulation steps): aux follows

    def init_buffers(self) -> None:
        """Zero the counts and the bias (after to_empty, which leaves buffers uninitialized)."""
        with torch.no_grad():
            self.tokens_per_expert.zero_()
            self.expert_bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        # Always added (zeros unless trained or loaded, e.g. DeepSeek V3's e_score_correction_bias):
        # a loaded bias is part of the model's routing whether or not this run updates it.
        scores, experts, all_scores = self.router(x, self.expert_bias)
        k = self.s.top_k
        flat = experts.flatten()
        # scatter_add, not bincount: bincount's output size depends on the data (a GPU sync).
        counts = flat.new_zeros(self.s.n_experts).scatter_add_(0, flat, torch.ones_like(flat))
        if self.training and torch._C._current_graph_task_id() == -1:  # not a recompute in backward
            with torch.no_grad():
                self.tokens_per_expert += counts.to(self.tokens_per_expert.dtype)
        order = torch.argsort(flat, stable=True)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        routed = _GatherRows.apply(x, order // k, inverse, k)  # x's rows in expert order, k per token
        if self.s.score_before_experts:
            routed = (routed.float() * scores.flatten()[order].unsqueeze(-1)).to(x.dtype)
        out = self.experts(routed, counts)
        # Back to token order ([T, k, D]), then each token's k outputs summed with its scores by one
        # batched matmul (float32 accumulation; autograd keeps only the k outputs and the scores).
        per_token = _GatherRows.apply(out, inverse, order, 1).view(-1, k, out.shape[-1])
        if self.s.score_before_experts:
            combined = per_token.sum(1)
        else:
            combined = torch.bmm(scores.to(out.dtype).unsqueeze(1), per_token).squeeze(1)
        combined = combined.to(x.dtype)
        if self.shared_experts is not None:
            combined = combined + self.shared_experts(x)
        if self.training and self.s.aux_loss > 0:
            combined = attach_loss(combined, self._aux_loss(all_scores, experts, shape))
        return combined.reshape(shape)

    def _aux_loss(self, scores: torch.Tensor, experts: torch.Tensor, shape) -> torch.Tensor:
        """DeepSeek V3's sequence-wise balance loss, alpha * sum_i f_i P_i per sequence, averaged:
        f_i = E / (k T) x tokens of the sequence routed to i, P_i = mean over its tokens of the
        normalized scores."""
        s = self.s
        batch, seq = (shape[0], shape[1]) if len(shape) == 3 else (1, shape[0])
        norm = scores / scores.sum(-1, keepdim=True)
        p = norm.view(batch, seq, -1).mean(1)                                       # [B, E]
        hits = F.one_hot(experts, s.n_experts).sum(1).view(batch, seq, -1).float()  # [B, S, E]
        f = hits.sum(1) * s.n_experts / (s.top_k * seq)                              # [B, E]
        return s.aux_loss * (f * p).sum(-1).mean() * self.aux_scale


class _GatherRows(torch.autograd.Function):
    """x[index], whose backward is a gather too: index's inverse permutation `back` picks each
    row's gradients, `repeats` (each source row's copies, adjacent in `back` order) are summed.
    Autograd's own x[index] backward is an accumulating index_put (a sort on GPUs: measured 5.7 ms
    of a 250 ms step of Qwen3-30B-A3B, 4 layers, on an H200)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, back: torch.Tensor, repeats: int) -> torch.Tensor:
        ctx.save_for_backward(back)
        ctx.repeats = repeats
        return x[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (back,) = ctx.saved_tensors
        rows = grad[back]
        if ctx.repeats > 1:
            rows = rows.view(-1, ctx.repeats, grad.shape[-1]).sum(1)
        return rows, None, None, None


def moe_layers(model: nn.Module) -> list[MoE]:
    """The MoE layers of a model (or pipeline stage), in module order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


@torch.no_grad()
def balance_update(layers: list[MoE], counts: torch.Tensor, coeff: float) -> None:
    """The aux-loss-free update (DeepSeek V3): every layer's expert_bias moves by coeff toward the
    experts that got fewer than the mean number of tokens, re-centred to mean 0.

    counts [layers, E]: tokens per expert summed over every rank that routed different tokens."""
    mean = counts.mean(dim=-1, keepdim=True)
    delta = coeff * torch.sign(mean - counts)
    delta -= delta.mean(dim=-1, keepdim=True)
    for layer, d in zip(layers, delta):
        layer.expert_bias += d.to(layer.expert_bias.dtype)

