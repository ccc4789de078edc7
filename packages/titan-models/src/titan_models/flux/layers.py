"""Flux building blocks: 3-axis RoPE, timestep embedding, embedders, attention projections, MLP.

Attention tensors keep the layout [batch, seq, heads, head_dim] until the core, and head counts
are read from the projections' outputs (view with -1): under tensor parallelism column-sharded
q/k/v give each rank its own heads and nothing here changes. The per-head q/k RMSNorm then sees
heads on dim 2 (the TP plan marks that dim as the sharded one for the norms' weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from titan_models.common.attention import sdpa_backends
from titan_models.common.fa4 import require_fa4

NORM_EPS = 1e-6  # LayerNorm and q/k RMSNorm eps of BFL's and diffusers' Flux


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0,
                       time_factor: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] (cos half, then sin half) of t [B] in [0, 1], scaled by
    time_factor first as BFL and diffusers do. Computed in float32."""
    t = t.float() * time_factor
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class EmbedND(nn.Module):
    """RoPE angles for n-axis position ids: ids [B, L, n] -> [B, L, head_dim / 2, 2] (cos, sin),
    float32. Axis i owns axes_dim[i] channels of each head (consecutive pairs, axes in order).
    Angles are computed in float64 (positions reach the thousands), as BFL does."""

    def __init__(self, theta: float, axes_dim: tuple[int, ...]) -> None:
        super().__init__()
        self.theta, self.axes_dim = theta, tuple(axes_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"position ids have {ids.shape[-1]} coordinates, the RoPE axes_dim "
                             f"{self.axes_dim} needs {len(self.axes_dim)}")
        angles = []
        for i, d in enumerate(self.axes_dim):
            omega = 1.0 / self.theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d)
            angles.append(ids[..., i].double()[..., None] * omega)
        angle = torch.cat(angles, dim=-1)
        return torch.stack([angle.cos(), angle.sin()], dim=-1).float()


def apply_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [B, L, H, D] by pe [B, L, D/2, 2] (BFL's interleaved
    layout), in float32; returns x's dtype."""
    xf = x.float().unflatten(-1, (-1, 2))
    cos, sin = pe[:, :, None, :, 0], pe[:, :, None, :, 1]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class MLPEmbedder(nn.Module):
    """in_layer -> SiLU -> out_layer (timestep, guidance and pooled-text embedders)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class JointCore(nn.Module):
    """Non-causal SDPA over q, k, v [B, H, S, D]: the attention kernel (context-parallel appliers
    may hook it). kernels: SDPA kernel priority for this call (common.attention.SDPA_KERNELS)."""

    def __init__(self, kernels: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.kernels = tuple(kernels)
        self._backends = sdpa_backends(self.kernels) if self.kernels else None
        self._fa4 = "fa4" in self.kernels

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self._fa4:
            require_fa4(q.device)
        if self._backends is None:
            return F.scaled_dot_product_attention(q, k, v)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self._backends, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v)


class SelfAttention(nn.Module):
    """q/k/v projections with per-head RMSNorm of q and k, and the output projection `wo`. The
    attention itself is joint over several streams, so the block runs it (see `attend`)."""

    def __init__(self, dim: int, head_dim: int, *, qkv_bias: bool = True, out_bias: bool = True) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.k_norm = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.wo = nn.Linear(dim, dim, bias=out_bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, dim] -> q, k, v [B, L, heads (local), head_dim], q and k normalized."""
        shape = (*x.shape[:2], -1, self.head_dim)
        q = self.q_norm(self.wq(x).view(shape))
        k = self.k_norm(self.wk(x).view(shape))
        return q, k, self.wv(x).view(shape)


def attend(core: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """RoPE on q and k [B, L, H, D], then the core; returns [B, L, H * D]."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    out = core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class MLP(nn.Module):
    """w1 -> GELU (tanh approximation, as BFL) -> w2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x), approximate="tanh"))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: LayerNorm (no affine) of x [B, L, D], scaled by 1 + scale and shifted (both [B, D])."""
    x = F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)
    return x * (1 + scale[:, None]) + shift[:, None]
