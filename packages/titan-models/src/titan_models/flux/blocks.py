"""The two Flux block kinds, with one forward signature, and the final layer.

    block(img [B, Li, D], txt [B, Lt, D], vec [B, D], pe [B, Lt + Li, D_head/2, 2]) -> (img, txt)

The joint sequence is text first, then image (pe is computed for that order). One signature
lets the model keep every block in one ModuleList, so FSDP, activation checkpointing and compile
wrap each block the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from titan_models.flux.layers import MLP, JointCore, SelfAttention, attend, modulate


class DoubleBlock(nn.Module):
    """Separate image and text weights (modulation, attention projections, MLP), one attention
    over both streams. img_mod / txt_mod give (shift, scale, gate) for attention, then for the MLP."""

    def __init__(self, dim: int, head_dim: int, mlp_hidden: int, *, qkv_bias: bool = True,
                 sdpa_kernels: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.img_mod = nn.Linear(dim, 6 * dim)
        self.img_attn = SelfAttention(dim, head_dim, qkv_bias=qkv_bias)
        self.img_mlp = MLP(dim, mlp_hidden)
        self.txt_mod = nn.Linear(dim, 6 * dim)
        self.txt_attn = SelfAttention(dim, head_dim, qkv_bias=qkv_bias)
        self.txt_mlp = MLP(dim, mlp_hidden)
        self.core = JointCore(sdpa_kernels)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor,
                pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = F.silu(vec)
        i_shift, i_scale, i_gate, i_shift2, i_scale2, i_gate2 = self.img_mod(v).chunk(6, dim=-1)
        t_shift, t_scale, t_gate, t_shift2, t_scale2, t_gate2 = self.txt_mod(v).chunk(6, dim=-1)
        iq, ik, iv = self.img_attn.project(modulate(img, i_shift, i_scale))
        tq, tk, tv = self.txt_attn.project(modulate(txt, t_shift, t_scale))
        joint = attend(self.core, torch.cat([tq, iq], 1), torch.cat([tk, ik], 1), torch.cat([tv, iv], 1), pe)
        t_out, i_out = joint.split([txt.shape[1], img.shape[1]], dim=1)
        img = img + i_gate[:, None] * self.img_attn.wo(i_out)
        img = img + i_gate2[:, None] * self.img_mlp(modulate(img, i_shift2, i_scale2))
        txt = txt + t_gate[:, None] * self.txt_attn.wo(t_out)
        txt = txt + t_gate2[:, None] * self.txt_mlp(modulate(txt, t_shift2, t_scale2))
        return img, txt


class SingleBlock(nn.Module):
    """One set of weights over the joint sequence; attention and MLP side by side from one
    modulated input, their outputs summed: x + gate * (attn.wo(attention) + mlp.w2(gelu(mlp.w1))).

    BFL fuses q/k/v with the MLP input (linear1) and the two output projections (linear2 over the
    concatenation); here they are separate linears with the same values (only the MLP output has
    the bias), so tensor parallel shards each one exactly (q/k/v and w1 by columns, wo and w2 by rows)."""

    def __init__(self, dim: int, head_dim: int, mlp_hidden: int, *, sdpa_kernels: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.modulation = nn.Linear(dim, 3 * dim)
        self.attn = SelfAttention(dim, head_dim, qkv_bias=True, out_bias=False)
        self.mlp = MLP(dim, mlp_hidden)
        self.core = JointCore(sdpa_kernels)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor,
                pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_txt = txt.shape[1]
        x = torch.cat([txt, img], dim=1)
        shift, scale, gate = self.modulation(F.silu(vec)).chunk(3, dim=-1)
        h = modulate(x, shift, scale)
        out = self.attn.wo(attend(self.core, *self.attn.project(h), pe)) + self.mlp(h)
        x = x + gate[:, None] * out
        return x[:, n_txt:], x[:, :n_txt]


class FinalLayer(nn.Module):
    """adaLN (shift, scale from the conditioning vector) then the projection to output channels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(vec)).chunk(2, dim=-1)
        return self.linear(modulate(img, shift, scale))
