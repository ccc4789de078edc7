"""Hyper-parameters of a Qwen 3 (dense) model."""

from __future__ import annotations

from dataclasses import dataclass

from titan_models.common.moe import MoEShape
from titan_models.common.rope import RopeScaling, YarnScaling
from titan_models.spec import ModelShape, with_overrides  # noqa: F401 (re-exported: the family's override)


@dataclass(frozen=True)
class Qwen3Args:
    """Shape and options of a Qwen 3 dense transformer.

    Against Llama 3: head_dim is its own number (0.6B: 16 heads x 128 on a 1024-wide model), q and k
    get a per-head RMSNorm before RoPE, RoPE rotates halves (HF's layout, so weights need no
    permutation), theta 1e6, RMSNorm eps 1e-6, the FFN width is explicit, and the small flavors tie
    their embeddings. Frozen: derive variants with `ModelSpec.args_for(flavor, **overrides)`.

    Qwen 3 MoE: `moe` set makes block i a mixture of experts (softmax top-k over n_experts,
    renormalized, no shared experts) unless i is in `dense_layers` (HF mlp_only_layers) or
    (i + 1) is not a multiple of `moe_step` (HF decoder_sparse_step); dense blocks are hidden_dim wide.
    """

    dim: int = 1024
    n_layers: int = 28
    n_heads: int = 16
    n_kv_heads: int = 8
    head_dim: int = 128
    hidden_dim: int = 3072
    vocab_size: int = 151936
    norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: RopeScaling | YarnScaling | None = None
    max_seq_len: int = 4096
    tie_embeddings: bool = True
    qk_norm: bool = True
    attn_backend: str = "sdpa"  # "sdpa" | "flex"
    sdpa_kernels: tuple[str, ...] = ()
    repeat_kv: bool = False
    attn_mask: str = "causal"   # "causal" | "block_causal"
    eos_id: int | None = None
    depth_init: bool = True
    moe: MoEShape | None = None
    moe_step: int = 1
    dense_layers: tuple[int, ...] = ()

    def is_moe_layer(self, i: int) -> bool:
        return self.moe is not None and i not in self.dense_layers and (i + 1) % self.moe_step == 0

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads

    def shape(self) -> ModelShape:
        m = self.moe
        moe = {} if m is None else dict(
            moe_layers=sum(self.is_moe_layer(i) for i in range(self.n_layers)), n_experts=m.n_experts,
            top_k=m.top_k, moe_hidden=m.hidden_dim, n_shared_experts=m.n_shared_experts, router_bias=m.gate_bias)
        return ModelShape(n_layers=self.n_layers, dim=self.dim, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                          head_dim=self.head_dim, ffn_hidden=self.hidden_dim, vocab_size=self.vocab_size,
                          tie_embeddings=self.tie_embeddings, qk_norm=self.qk_norm, **moe)

