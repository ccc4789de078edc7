"""Rotary position embeddings as a real table of (cos, sin), with Llama 3.1 frequency scaling.

Why real and not complex: complex buffers do not survive every path a model takes (DTensor
sharding for context parallel, some torch.compile backends, dtype casts), while a float table of
shape [seq, head_dim // 2, 2] does. Pairs are Meta's interleaved (x[2i], x[2i+1]) layout; the
Hugging Face adapter permutes wq/wk to and from HF's rotate-half layout.
"""

from __future__ import annotations

import math

import torch

from titan_models.llama.args import RopeScaling


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """The head_dim // 2 rotation frequencies (radians per position), float64."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    if scaling is None:
        return freqs
    low_wavelen = scaling.original_max_seq_len / scaling.low_freq_factor
    high_wavelen = scaling.original_max_seq_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / freqs
    # 0 at the long-wavelength edge of the band, 1 at the short one.
    smooth = (scaling.original_max_seq_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * freqs / scaling.factor + smooth * freqs
    scaled = torch.where(wavelen > low_wavelen, freqs / scaling.factor, blended)
    return torch.where(wavelen < high_wavelen, freqs, scaled)


def rope_table(head_dim: int, seq_len: int, theta: float, scaling: RopeScaling | None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """float32 [seq_len, head_dim // 2, 2] holding (cos, sin) of position * frequency.

    Angles are computed in float64: at position 1e5 a float32 angle is off by ~1e-2 radians.
    """
    freqs = rope_frequencies(head_dim, theta, scaling, device)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), freqs)
    return torch.stack((angles.cos(), angles.sin()), dim=-1).float()


def _rotate_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    pairs = (x if x.dtype == torch.float64 else x.float()).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def _rotate_complex(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xc = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))
    out = torch.view_as_real(xc * torch.complex(cos.float(), sin.float())).flatten(-2)
    return out.type_as(x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., seq, heads, head_dim] rotated pairwise by (cos, sin) [seq, 1, head_dim // 2].

    Compiled: real arithmetic, which inductor fuses into one kernel (it does not fuse complex
    ops). Eager: one complex multiply instead of six strided (unvectorized) real kernels.
    """
    if torch.compiler.is_compiling() or x.dtype == torch.float64:
        return _rotate_real(x, cos, sin)
    return _rotate_complex(x, cos, sin)


class _Rope(torch.autograd.Function):
    """Rotation forward, rotation by the opposite angle backward (a rotation's transpose).

    Why not plain autograd: its backward replays the forward's graph (the casts and, compiled,
    the strided real products); the inverse rotation is the same single operation as the
    forward and needs nothing saved but the (shared) table.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate x [batch, seq, heads, head_dim] by table [seq, head_dim // 2, 2]; math in float32."""
    cos = table[..., 0].unsqueeze(1)  # [seq, 1, head_dim // 2]: broadcast over batch and heads
    sin = table[..., 1].unsqueeze(1)
    if table.requires_grad:  # a learned table (not Llama's): let autograd see everything
        return _rotate(x, cos, sin)
    return _Rope.apply(x, cos, sin)
