"""Rotary position embeddings: frequencies (plain, Llama 3.1 scaling, YaRN), a real (cos, sin) table,
and the rotation in either pair layout.

Why a real table and not complex: complex buffers do not survive every path a model takes (DTensor
sharding for context parallel, some torch.compile backends, dtype casts), while a float table of
shape [seq, head_dim // 2, 2] does.

Layouts: "pairs" rotates (x[2i], x[2i+1]) of each head, as Meta's Llama and DeepSeek do; "halves"
rotates (x[i], x[i + head_dim/2]), as Hugging Face's Llama, Qwen and GPT-OSS do. A family picks
the layout its reference weights were trained in, so its HF adapter needs no permutation (Llama
keeps Meta's pairs and permutes wq/wk for HF).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LAYOUTS = ("pairs", "halves")


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 RoPE frequency scaling ("llama3" rope_type in Hugging Face configs).

    Wavelengths shorter than original_max_seq_len / high_freq_factor keep their frequency, those
    longer than original_max_seq_len / low_freq_factor are divided by `factor`, and the band in
    between is interpolated smoothly.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


@dataclass(frozen=True)
class YarnScaling:
    """YaRN ("yarn" rope_type): frequencies interpolated by `factor` below the band that turns
    beta_slow..beta_fast times over original_max_seq_len, kept above it, ramped in between; cos and
    sin are multiplied by an attention factor (0.1 ln(factor) + 1 unless given), as Hugging Face does."""

    factor: float
    original_max_seq_len: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    attention_factor: float | None = None

    def magnitude(self) -> float:
        """The factor cos and sin are multiplied by."""
        if self.attention_factor is not None:
            return self.attention_factor
        if self.mscale and self.mscale_all_dim:
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor, self.mscale_all_dim)
        return yarn_mscale(self.factor)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_frequencies(head_dim: int, theta: float, s: YarnScaling, device) -> torch.Tensor:
    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(s.original_max_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64, device=device) - low) / (high - low)).clamp(0, 1)
    base = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    extrapolated = 1.0 / base
    interpolated = 1.0 / (s.factor * base)
    keep = 1 - ramp  # 1: high frequencies, kept; 0: low frequencies, interpolated
    return interpolated * (1 - keep) + extrapolated * keep


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | YarnScaling | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """The head_dim // 2 rotation frequencies (radians per position), float64."""
    if isinstance(scaling, YarnScaling):
        return _yarn_frequencies(head_dim, theta, scaling, device)
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


def rope_table(head_dim: int, seq_len: int, theta: float, scaling: RopeScaling | YarnScaling | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """float32 [seq_len, head_dim // 2, 2] holding (cos, sin) of position * frequency (times YaRN's
    attention factor). Angles are computed in float64: at position 1e5 a float32 angle is off by
    ~1e-2 radians."""
    freqs = rope_frequencies(head_dim, theta, scaling, device)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), freqs)
    table = torch.stack((angles.cos(), angles.sin()), dim=-1)
    if isinstance(scaling, YarnScaling):
        table = table * scaling.magnitude()
    return table.float()


def _pairs_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    pairs = (x if x.dtype == torch.float64 else x.float()).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def _pairs_complex(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xc = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))
    out = torch.view_as_real(xc * torch.complex(cos.float(), sin.float())).flatten(-2)
    return out.type_as(x)


def _halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x if x.dtype == torch.float64 else x.float()
    x0, x1 = xf.chunk(2, dim=-1)
    return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).type_as(x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """x [..., seq, heads, head_dim] rotated by (cos, sin) [seq, 1, head_dim // 2].

    Pairs, compiled: real arithmetic, which inductor fuses into one kernel (it does not fuse
    complex ops). Pairs, eager: one complex multiply instead of six strided real kernels.
    """
    if layout == "halves":
        return _halves(x, cos, sin)
    if torch.compiler.is_compiling() or x.dtype == torch.float64:
        return _pairs_real(x, cos, sin)
    return _pairs_complex(x, cos, sin)


class _Rope(torch.autograd.Function):
    """Rotation forward, rotation by the opposite angle backward (a rotation's transpose).

    Why not plain autograd: its backward replays the forward's graph (the casts and, compiled,
    the strided real products); the inverse rotation is the same single operation as the
    forward and needs nothing saved but the (shared) table.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.layout = layout
        return _rotate(x, cos, sin, layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin, ctx.layout), None, None, None


def apply_rope(x: torch.Tensor, table: torch.Tensor, layout: str = "pairs") -> torch.Tensor:
    """Rotate x [batch, seq, heads, head_dim] by table [seq, head_dim // 2, 2]; math in float32.
    A YaRN table's magnitude scales x as well (cos and sin carry the attention factor)."""
    cos = table[..., 0].unsqueeze(1)  # [seq, 1, head_dim // 2]: broadcast over batch and heads
    sin = table[..., 1].unsqueeze(1)
    if layout not in LAYOUTS:
        raise ValueError(f"rope layout {layout!r} is not one of {LAYOUTS}")
    if table.requires_grad:  # a learned table: let autograd see everything
        return _rotate(x, cos, sin, layout)
    # the backward rotates by the opposite angle: the transpose, also of YaRN's scaled rotation
    return _Rope.apply(x, cos, sin, layout)
