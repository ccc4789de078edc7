"""Llama4Args: the shape and options of a Llama 4 text model (Scout, Maverick)."""

from __future__ import annotations

from dataclasses import dataclass

from titan_models.common.attention import AttentionShape
from titan_models.common.moe import MoEShape
from titan_models.common.rope import RopeScaling
from titan_models.spec import ModelShape, with_overrides  # noqa: F401 (re-exported: the family's override)


@dataclass(frozen=True)
class Llama4Args:
    """Meta's Llama 4 text model as its Hugging Face config describes it.

    Layers: every `nope_every`-th one (i + 1 a multiple of it; 0: none) has no positional encoding
    and attends to the whole causal past, with attention-temperature tuning of its queries
    (`temperature_tuning`: q x (1 + attn_scale log(1 + floor((p + 1) / floor_scale)))); the others
    rotate q and k (interleaved pairs, Llama 3.1 scaling), L2-normalize them per head (`qk_norm`)
    and attend within chunks of `chunk_size` tokens (None: causal). Every `moe_step`-th block
    (i + 1 a multiple of it) is a mixture of experts: top-1 sigmoid routing whose score scales the
    expert's input, plus a shared expert; the others are dense SwiGLUs hidden_dim wide.
    torchtitan's copy has neither the L2 norm nor the temperature tuning; both are Meta's.
    Frozen: derive variants with `ModelSpec.args_for(flavor, **overrides)`.
    """

    dim: int = 5120
    n_layers: int = 48
    n_heads: int = 40
    n_kv_heads: int = 8
    head_dim: int = 128
    hidden_dim: int = 16384
    vocab_size: int = 202048
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 8192
    tie_embeddings: bool = False
    moe: MoEShape | None = None
    moe_step: int = 1
    nope_every: int = 4
    chunk_size: int | None = 8192
    qk_norm: bool = True
    temperature_tuning: bool = True
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    attn_backend: str = "sdpa"  # "sdpa" | "flex" (chunked layers: flex on GPUs, the exact path on CPU)
    sdpa_kernels: tuple[str, ...] = ()
    repeat_kv: bool = False
    attn_mask: str = "causal"   # "causal" | "block_causal"
    eos_id: int | None = None
    depth_init: bool = True

    def uses_rope(self, i: int) -> bool:
        return self.nope_every <= 0 or (i + 1) % self.nope_every != 0

    def is_moe_layer(self, i: int) -> bool:
        return self.moe is not None and (i + 1) % self.moe_step == 0

    def attention_shape(self, i: int) -> AttentionShape:
        rope = self.uses_rope(i)
        return AttentionShape(
            dim=self.dim, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
            rope_layout="pairs", backend=self.attn_backend, sdpa_kernels=self.sdpa_kernels, repeat_kv=self.repeat_kv,
            rope=rope, chunk=self.chunk_size if rope else None,
            qk_l2_eps=self.norm_eps if (rope and self.qk_norm) else None,
            temperature=(self.floor_scale, self.attn_scale) if (not rope and self.temperature_tuning) else None)

    def shape(self) -> ModelShape:
        m = self.moe
        moe = {} if m is None else dict(
            moe_layers=sum(self.is_moe_layer(i) for i in range(self.n_layers)), n_experts=m.n_experts,
            top_k=m.top_k, moe_hidden=m.hidden_dim, n_shared_experts=m.n_shared_experts, router_bias=m.gate_bias)
        return ModelShape(n_layers=self.n_layers, dim=self.dim, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                          head_dim=self.head_dim, ffn_hidden=self.hidden_dim, vocab_size=self.vocab_size,
                          tie_embeddings=self.tie_embeddings, **moe)
