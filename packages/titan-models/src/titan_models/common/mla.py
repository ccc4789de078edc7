"""Multi-head latent attention (DeepSeek V2 / V3).

    q:  x -> wq                                  (q_lora_rank = 0)
        x -> wq_a -> q_norm -> wq_b              (q_lora_rank > 0: a low-rank bottleneck)
        per head: [nope (qk_nope_dim) | rope (qk_rope_dim)], RoPE on the rope part
    kv: x -> wkv_a -> [latent (kv_lora_rank) | k_rope (qk_rope_dim)]
        latent -> kv_norm -> wkv_b -> per head: [k_nope (qk_nope_dim) | v (v_head_dim)]
        k_rope: one RoPE'd key part shared by every head (like multi-query attention)
    attention over q = [q_nope | q_rope], k = [k_nope | k_rope], v: the value head is narrower than
    the query/key head (128 vs 192 in every published flavor); then wo.

Why the latent: at inference only the kv_lora_rank + qk_rope_dim numbers per token are cached. In
training it is a low-rank factorization of the key/value projections.

RoPE: interleaved pairs, as DeepSeek's weights were trained (HF rope_interleave=True), so the HF
adapter copies weights unchanged. The softmax scale is 1/sqrt(qk head dim), times YaRN's mscale^2
when the model uses YaRN with mscale_all_dim (DeepSeek's long-context recipe).

Tensor parallel: heads are split (wq / wq_b and wkv_b column-wise, wo row-wise); the latent path
(wq_a, q_norm, wkv_a, kv_norm) is replicated on each rank. The shared k_rope passes through
`shared_key`, an identity module where a TP plan sums its gradient over the ranks (each rank's
gradient comes from its own heads only); without TP it does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from titan_models.common.attention import make_core
from titan_models.common.rope import apply_rope
from titan_models.errors import ModelConfigError
from torch import nn


@dataclass(frozen=True)
class MLAShape:
    dim: int
    n_heads: int
    q_lora_rank: int        # 0: q straight from x
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_head_dim: int
    norm_eps: float = 1e-5
    softmax_scale: float | None = None  # None: 1 / sqrt(qk_nope_dim + qk_rope_dim)
    backend: str = "sdpa"
    sdpa_kernels: tuple[str, ...] = ()

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_dim + self.qk_rope_dim


class SharedKey(nn.Identity):
    """The RoPE'd key part every head reads (see the module docstring: a TP plan hooks it)."""


class MLA(nn.Module):
    def __init__(self, s: MLAShape) -> None:
        super().__init__()
        self.s = s
        if s.q_lora_rank:
            self.wq_a = nn.Linear(s.dim, s.q_lora_rank, bias=False)
            self.q_norm = nn.RMSNorm(s.q_lora_rank, eps=s.norm_eps)
            self.wq_b = nn.Linear(s.q_lora_rank, s.n_heads * s.qk_head_dim, bias=False)
        else:
            self.wq = nn.Linear(s.dim, s.n_heads * s.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(s.dim, s.kv_lora_rank + s.qk_rope_dim, bias=False)
        self.kv_norm = nn.RMSNorm(s.kv_lora_rank, eps=s.norm_eps)
        self.wkv_b = nn.Linear(s.kv_lora_rank, s.n_heads * (s.qk_nope_dim + s.v_head_dim), bias=False)
        self.wo = nn.Linear(s.n_heads * s.v_head_dim, s.dim, bias=False)
        self.shared_key = SharedKey()
        self.sdpa = make_core(s.backend, s.sdpa_kernels, s.softmax_scale)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask=None) -> torch.Tensor:
        """x [batch, seq, dim]; rope: the table for qk_rope_dim (at least seq rows)."""
        s = self.s
        bsz, seq, _ = x.shape
        if rope.shape[0] < seq:
            raise ModelConfigError(f"sequence length {seq} is longer than the RoPE table "
                                   f"({rope.shape[0]} rows): raise max_seq_len")
        rope = rope[:seq]
        q = self.wq_b(self.q_norm(self.wq_a(x))) if s.q_lora_rank else self.wq(x)
        q = q.view(bsz, seq, -1, s.qk_head_dim)  # -1: this rank's heads under TP
        q_nope, q_rope = q.split([s.qk_nope_dim, s.qk_rope_dim], dim=-1)
        q = torch.cat([q_nope, apply_rope(q_rope, rope, "pairs")], dim=-1)
        latent, k_rope = self.wkv_a(x).split([s.kv_lora_rank, s.qk_rope_dim], dim=-1)
        k_rope = self.shared_key(apply_rope(k_rope.unsqueeze(2), rope, "pairs"))  # [b, s, 1, rope]
        kv = self.wkv_b(self.kv_norm(latent)).view(bsz, seq, -1, s.qk_nope_dim + s.v_head_dim)
        k_nope, v = kv.split([s.qk_nope_dim, s.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(-1, -1, k_nope.shape[2], -1)], dim=-1)
        out = self.sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))
