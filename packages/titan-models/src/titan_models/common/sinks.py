"""Attention with learned sinks, sliding windows or chunks (GPT-OSS, Llama 4).

A sink is one learned logit per head that joins the softmax's denominator and carries no value:

    weights_j = exp(s_j) / (sum_k exp(s_k) + exp(sink))
    out       = sum_j weights_j v_j = softmax(s) v * sigmoid(lse - sink),  lse = log sum_k exp(s_k)

so any attention kernel that returns its log-sum-exp gives the sink version by one rescale, and the
sink's gradient flows through lse. Two paths:
- "sdpa" (any device): the exact reference, an explicit masked softmax over [scores, sink] in
  float32 (memory O(seq^2) per head: for tests, the CPU and short sequences; use "flex" on GPUs).
  Without sinks (Llama 4's chunks) it is SDPA with a dense bool mask;
- "flex" (GPUs): FlexAttention with return_lse under a causal (sliding-window) BlockMask, then the
  rescale above; torch.compile fuses it. (FlexAttention has no CPU backward.)

The window counts keys including the query's own: key j is seen from query i when
i - window < j <= i (GPT-OSS: 128 on even layers, full causal on odd ones). A chunk limits
attention to the query's own block of `chunk` tokens: j <= i and j // chunk == i // chunk (Llama 4's
RoPE layers, 8192).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from titan_models.errors import ModelConfigError
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a parameter sharded over heads by a TP plan (duck-typed: no
    torch.distributed import in models); the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def with_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Attention output [b, h, s, d] and its log-sum-exp [b, h, s] -> the output with a sink
    logit per head [h] in the denominator: out * sigmoid(lse - sink), in float32."""
    scale = torch.sigmoid(lse.float() - sinks.float().view(1, -1, 1))
    return (out.float() * scale.unsqueeze(-1)).to(out.dtype)


def allowed(seq: int, window: int | None, device, chunk: int | None = None) -> torch.Tensor:
    """bool [seq, seq]: query i sees key j (causal, within the window / chunk when given)."""
    i = torch.arange(seq, device=device).unsqueeze(1)
    j = torch.arange(seq, device=device).unsqueeze(0)
    ok = j <= i
    if window is not None:
        ok = ok & (i - j < window)
    if chunk is not None:
        ok = ok & (i // chunk == j // chunk)
    return ok


def eager_sink_attention(q, k, v, sinks: torch.Tensor | None, window: int | None, mask=None,
                         scale: float | None = None, chunk: int | None = None) -> torch.Tensor:
    """The reference: q [b, h, s, d], k / v [b, h_kv, s, d]; mask: None or a dense bool
    [b, 1, s, s] (documents) combined with causal + window. float32 math, output in v's dtype."""
    seq = q.shape[2]
    if sinks is None and mask is None and window is None and (chunk is None or chunk >= seq):
        # one chunk covers the sequence: plain causal attention, so SDPA may pick its fused
        # causal kernels (cuDNN / flash) instead of the masked ones a dense bool mask allows
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                              enable_gqa=k.shape[1] != q.shape[1])
    ok = allowed(q.shape[2], window, q.device, chunk)
    if mask is not None:
        ok = ok & mask
    if sinks is None:  # a plain masked attention: SDPA's kernels (no score matrix kept for backward)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ok, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    rep = q.shape[1] // k.shape[1]
    if rep > 1:  # query head i reads kv head i // rep
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    scores = scores.masked_fill(~ok, float("-inf"))
    if sinks is not None:
        sink = sinks.float().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = F.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = F.softmax(scores, dim=-1)
    return (probs @ v.float()).to(v.dtype)


class SinkCore(nn.Module):
    """The attention core of GPT-OSS blocks: `sinks` [n_heads] (optional) and a sliding window
    (optional). forward(q, k, v, mask) like the other cores; mask from common.masks (None:
    causal; a dense bool mask: documents, with backend "sdpa")."""

    def __init__(self, n_heads: int, *, sinks: bool = True, window: int | None = None,
                 chunk: int | None = None, backend: str = "sdpa") -> None:
        super().__init__()
        if backend not in ("sdpa", "flex"):
            raise ModelConfigError(f"attn_backend={backend!r}: attention sinks run on 'sdpa' (the exact "
                                   "reference) or 'flex'")
        self.sinks = nn.Parameter(torch.zeros(n_heads)) if sinks else None
        self.window, self.chunk = window, chunk
        self.backend = backend
        self._masks: dict = {}

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
        sinks = None if self.sinks is None else _local(self.sinks)
        if self.backend == "sdpa":
            return eager_sink_attention(q, k, v, sinks, self.window, mask, chunk=self.chunk)
        # flex: its own (windowed) causal BlockMask; a model's causal mask carries nothing more
        # (document masks with flex are refused by the family's validate)
        out, lse = self._flex(q, k, v)
        return out if sinks is None else with_sinks(out, lse, sinks)

    def _flex(self, q, k, v):
        from titan_models.common.attention import _flex
        from torch.nn.attention.flex_attention import create_block_mask

        seq, window, chunk = q.shape[2], self.window, self.chunk
        key = (seq, str(q.device))
        if key not in self._masks:
            def local_causal(b, h, qi, ki):
                ok = qi >= ki
                if window is not None:
                    ok = ok & (qi - ki < window)
                if chunk is not None:
                    ok = ok & (qi // chunk == ki // chunk)
                return ok

            self._masks[key] = create_block_mask(local_causal, None, None, seq, seq, device=q.device)
        return _flex(q, k, v, self._masks[key], return_lse=True)
