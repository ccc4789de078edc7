"""Grouped-query self-attention with a swappable attention core (`attention.sdpa`).

    x -> wq, wk, wv (optional biases) -> [q_norm, k_norm per head] -> RoPE(q, k) -> core -> wo

The core sees q, k, v as [batch, heads, seq, head_dim] after RoPE. k and v keep their n_kv_heads
(query head i reads kv head i // (n_heads / n_kv_heads), as in Meta's and HF's code) and the core
attends with grouped-query support (SDPA's and flex's enable_gqa): repeating them would cost an
extra copy of k and v per layer, saved for backward. With `repeat_kv` they arrive repeated to the
query heads, for cores that need equal head counts (torch's ring attention). head_dim is its own
argument (Qwen 3: 16 heads x 128 on a 1024-wide model). Head counts are read from the projection
outputs (view with -1), so column-sharded wq/wk/wv under tensor parallelism just work with local heads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from titan_models.common.fa4 import require_fa4
from titan_models.common.masks import causal_block_mask
from titan_models.common.rope import apply_rope
from titan_models.common.sinks import SinkCore
from titan_models.errors import ModelConfigError, unknown_name
from torch import nn

# "fa4": SDPA's flash backend run by FlashAttention-4 (common.fa4; CUDA 9.x/10.x, flash-attn-4)
SDPA_KERNELS = ("cudnn", "flash", "efficient", "math", "fa4")
BACKENDS = ("sdpa", "flex")


def sdpa_backends(names: tuple[str, ...]) -> list:
    """torch SDPBackend values for kernel names (SDPA_KERNELS), in the given order."""
    from torch.nn.attention import SDPBackend

    table = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH,
             "fa4": SDPBackend.FLASH_ATTENTION}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise unknown_name("SDPA kernel", unknown[0], table)
    return [table[n] for n in names]


class SDPACore(nn.Module):
    """torch's scaled_dot_product_attention: is_causal when mask is None, else a dense bool mask.

    `kernels` (e.g. ("cudnn", "flash", "efficient", "math")) sets the order in which SDPA tries
    its kernels for this call only (torch.nn.attention.sdpa_kernel with set_priority, which
    torch.compile traces); empty keeps torch's default order. Why it matters: on Hopper GPUs
    cuDNN's fused attention is faster than the flash kernel torch picks by default.
    "fa4" is the flash backend with FlashAttention-4's kernels behind it (common.fa4): activated
    for the process at the first eager call; a compiled model needs `activate_fa4()` before it is
    traced (the trainer does this at setup).
    """

    def __init__(self, kernels: tuple[str, ...] = (), scale: float | None = None) -> None:
        super().__init__()
        self.kernels = tuple(kernels)
        self.scale = scale  # softmax scale; None: 1 / sqrt(q's head dim)
        self._backends = sdpa_backends(self.kernels) if self.kernels else None
        self._fa4 = "fa4" in self.kernels

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if self._fa4:
            require_fa4(q.device)
        if self._backends is None:
            return self._attend(q, k, v, mask, self.scale)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self._backends, set_priority=True):
            return self._attend(q, k, v, mask, self.scale)

    @staticmethod
    def _attend(q, k, v, mask, scale=None):
        gqa = k.shape[1] != q.shape[1]
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, scale=scale)


_compiled_flex = None


def _flex(q, k, v, block_mask, scale=None, return_lse: bool = False):
    """FlexAttention: fused by the surrounding torch.compile when there is one, else compiled on
    its own on accelerators. On CPU it runs eagerly (the unfused reference: it materializes the
    scores, forward only), which is what tests and debugging need. return_lse: (out, lse)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    gqa = k.shape[1] != q.shape[1]
    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa, scale=scale, return_lse=return_lse)
    if q.device.type == "cpu":
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            raise ModelConfigError(
                "attn_backend='flex' cannot train on CPU (torch's FlexAttention has no CPU "
                "backward): use attn_backend='sdpa', which also supports attn_mask='block_causal'")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa, scale=scale, return_lse=return_lse)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=gqa, scale=scale, return_lse=return_lse)


class FlexCore(nn.Module):
    """FlexAttention under a BlockMask (causal, or causal within documents). With mask None it
    uses a causal BlockMask for q's length (normally the Transformer passes one in)."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.scale = scale
        self._causal_cache: dict = {}

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
        if mask is None:
            mask = causal_block_mask(q.shape[2], q.device, self._causal_cache)
        return _flex(q, k, v, mask, self.scale)


def make_core(backend: str, sdpa_kernels: tuple[str, ...] = (), scale: float | None = None) -> nn.Module:
    """The attention core; scale: the softmax scale (None: 1 / sqrt(q's head dim))."""
    if backend not in BACKENDS:
        raise unknown_name("attn_backend", backend, BACKENDS)
    return SDPACore(sdpa_kernels, scale) if backend == "sdpa" else FlexCore(scale)


@dataclass(frozen=True)
class AttentionShape:
    """One attention layer's widths and options."""

    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    bias: bool = False                 # biases on wq, wk, wv and wo (GPT-OSS; Qwen 2)
    qk_norm_eps: float | None = None   # RMSNorm(head_dim) of q and k per head, before RoPE (Qwen 3)
    rope_layout: str = "pairs"         # see common.rope
    backend: str = "sdpa"
    sdpa_kernels: tuple[str, ...] = ()
    repeat_kv: bool = False
    sinks: bool = False                # a learned sink logit per head (GPT-OSS): common.sinks
    window: int | None = None          # sliding-window attention over this many keys (common.sinks' core)
    chunk: int | None = None           # chunked local attention: within blocks of this many tokens (Llama 4)
    rope: bool = True                  # False: no positional encoding in this layer (Llama 4's NoPE layers)
    qk_l2_eps: float | None = None     # weightless RMS ("L2") norm of q and k per head after RoPE (Llama 4)
    temperature: tuple[float, float] | None = None  # (floor_scale, attn_scale): Llama 4's NoPE-layer q scaling


def _temperature(q: torch.Tensor, floor_scale: float, attn_scale: float) -> torch.Tensor:
    """Llama 4's attention-temperature tuning of NoPE layers: position p's query scaled by
    1 + attn_scale * log(1 + floor((p + 1) / floor_scale)), so long contexts keep sharp attention."""
    pos = torch.arange(q.shape[1], device=q.device, dtype=torch.float32)
    scale = torch.log1p(torch.floor((pos + 1.0) / floor_scale)) * attn_scale + 1.0
    return (q * scale.view(1, -1, 1, 1)).to(q.dtype)


class Attention(nn.Module):
    """wq/wk/wv/wo projections, optional per-head q/k RMSNorm, RoPE on q and k, then the core `sdpa`."""

    def __init__(self, s: AttentionShape) -> None:
        super().__init__()
        self.head_dim = s.head_dim
        self.rope_layout = s.rope_layout
        self.wq = nn.Linear(s.dim, s.n_heads * s.head_dim, bias=s.bias)
        self.wk = nn.Linear(s.dim, s.n_kv_heads * s.head_dim, bias=s.bias)
        self.wv = nn.Linear(s.dim, s.n_kv_heads * s.head_dim, bias=s.bias)
        self.wo = nn.Linear(s.n_heads * s.head_dim, s.dim, bias=s.bias)
        if s.qk_norm_eps is not None:
            self.q_norm = nn.RMSNorm(s.head_dim, eps=s.qk_norm_eps)
            self.k_norm = nn.RMSNorm(s.head_dim, eps=s.qk_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.rope, self.qk_l2_eps, self.temperature = s.rope, s.qk_l2_eps, s.temperature
        if s.sinks or s.window is not None or s.chunk is not None:
            self.sdpa = SinkCore(s.n_heads, sinks=s.sinks, window=s.window, chunk=s.chunk, backend=s.backend)
        else:
            self.sdpa = make_core(s.backend, s.sdpa_kernels)
        self.repeat_kv = s.repeat_kv

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask=None) -> torch.Tensor:
        """x [batch, seq, dim]; rope: the RoPE table, at least seq rows (its first seq are used:
        under context parallel the table is this rank's shard); mask from masks.MaskBuilder."""
        bsz, seq, _ = x.shape
        if rope.shape[0] < seq:
            raise ModelConfigError(f"sequence length {seq} is longer than the RoPE table "
                                   f"({rope.shape[0]} rows): raise max_seq_len")
        rope = rope[:seq]
        q = self.wq(x).view(bsz, seq, -1, self.head_dim)
        k = self.wk(x).view(bsz, seq, -1, self.head_dim)
        v = self.wv(x).view(bsz, seq, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q = apply_rope(q, rope, self.rope_layout)
            k = apply_rope(k, rope, self.rope_layout)
        if self.qk_l2_eps is not None:
            q = F.rms_norm(q.float(), (q.shape[-1],), eps=self.qk_l2_eps).type_as(q)
            k = F.rms_norm(k.float(), (k.shape[-1],), eps=self.qk_l2_eps).type_as(k)
        if self.temperature is not None:
            q = _temperature(q, *self.temperature)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        repeats = q.shape[1] // k.shape[1]
        if self.repeat_kv and repeats > 1:  # query head i reads kv head i // repeats
            k = k.repeat_interleave(repeats, dim=1)
            v = v.repeat_interleave(repeats, dim=1)
        out = self.sdpa(q, k, v, mask)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))
