"""GptOssArgs: the shape and options of a GPT-OSS model."""

from __future__ import annotations

from dataclasses import dataclass

from titan_models.common.attention import AttentionShape
from titan_models.common.moe import MoEShape
from titan_models.common.rope import YarnScaling
from titan_models.spec import ModelShape, with_overrides  # noqa: F401 (re-exported: the family's override)


@dataclass(frozen=True)
class GptOssArgs:
    """Grouped-query attention with biases on q/k/v/o and a learned sink logit per head (in the
    softmax's denominator: common.sinks), sliding-window attention (`sliding_window` keys) on the
    layers in `sliding_layers` (None: the even ones, as GPT-OSS) and full causal on the others;
    YaRN RoPE in HF's rotate-half layout, cos/sin scaled, not truncated; every block a mixture of
    experts (router with a bias, softmax of the top-k logits, experts with biases and the clamped
    SwiGLU). Frozen: derive variants with `ModelSpec.args_for(flavor, **overrides)`."""

    dim: int = 2880
    n_layers: int = 24
    n_heads: int = 64
    n_kv_heads: int = 8
    head_dim: int = 64
    vocab_size: int = 201088
    norm_eps: float = 1e-5
    rope_theta: float = 150000.0
    rope_scaling: YarnScaling | None = YarnScaling(factor=32.0, original_max_seq_len=4096, beta_fast=32.0,
                                                   beta_slow=1.0, truncate=False)
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    sinks: bool = True
    sliding_window: int | None = 128
    sliding_layers: tuple[int, ...] | None = None
    moe: MoEShape | None = None
    attn_backend: str = "sdpa"  # "sdpa" (exact, O(seq^2) memory) | "flex" (GPUs)
    sdpa_kernels: tuple[str, ...] = ()
    repeat_kv: bool = False
    attn_mask: str = "causal"   # "causal" | "block_causal" (sdpa only)
    eos_id: int | None = None
    depth_init: bool = True

    def is_sliding(self, i: int) -> bool:
        if self.sliding_window is None:
            return False
        return i % 2 == 0 if self.sliding_layers is None else i in self.sliding_layers

    def attention_shape(self, i: int) -> AttentionShape:
        return AttentionShape(dim=self.dim, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                              bias=True, rope_layout="halves", backend=self.attn_backend, sdpa_kernels=self.sdpa_kernels,
                              repeat_kv=self.repeat_kv, sinks=self.sinks,
                              window=self.sliding_window if self.is_sliding(i) else None)

    def shape(self) -> ModelShape:
        m = self.moe
        moe = {} if m is None else dict(moe_layers=self.n_layers, n_experts=m.n_experts, top_k=m.top_k,
                                        moe_hidden=m.hidden_dim, router_bias=m.gate_bias)
        return ModelShape(n_layers=self.n_layers, dim=self.dim, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                          head_dim=self.head_dim, ffn_hidden=m.hidden_dim if m else 0, vocab_size=self.vocab_size,
                          tie_embeddings=self.tie_embeddings, attention_bias=True, attention_sinks=self.sinks,
                          experts_bias=bool(m and m.experts_bias), **moe)
