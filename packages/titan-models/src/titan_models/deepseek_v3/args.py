"""DeepSeekV3Args: the shape and options of a DeepSeek V3 / V2 model (one family, several routers)."""

from __future__ import annotations

from dataclasses import dataclass

from titan_models.common.mla import MLAShape
from titan_models.common.moe import MoEShape
from titan_models.common.rope import YarnScaling, yarn_mscale
from titan_models.spec import ModelShape, with_overrides  # noqa: F401 (re-exported: the family's override)


@dataclass(frozen=True)
class DeepSeekV3Args:
    """Multi-head latent attention (see common.mla), the first n_dense_layers blocks dense
    (hidden_dim wide), the others mixtures of experts (`moe`: routing, shared experts; dense
    everywhere when None).

    RoPE: interleaved pairs on qk_rope_dim of each head; rope_scaling YaRN as in the published
    configs, applied at every length as Hugging Face does (torchtitan applies it only above 4096
    tokens). YaRN with mscale_all_dim also scales the softmax by mscale^2.

    mtp_layers: multi-token prediction modules (DeepSeek V3 has 1): module k predicts token
    t + k + 1 from the main model's hidden state and the embedding of token t + k; their mean
    cross-entropy, times mtp_loss_weight, joins the training loss (off by default; skipped in eval).
    Frozen: derive variants with `ModelSpec.args_for(flavor, **overrides)`.
    """

    dim: int = 2048
    n_layers: int = 27
    n_dense_layers: int = 1
    n_heads: int = 16
    q_lora_rank: int = 0
    kv_lora_rank: int = 512
    qk_nope_dim: int = 128
    qk_rope_dim: int = 64
    v_head_dim: int = 128
    hidden_dim: int = 10944
    moe: MoEShape | None = None
    vocab_size: int = 102400
    norm_eps: float = 1e-6        # as DeepSeek's config.json files (torchtitan: 1e-5)
    rope_theta: float = 10000.0
    rope_scaling: YarnScaling | None = None
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    attn_backend: str = "sdpa"  # "sdpa" | "flex"
    sdpa_kernels: tuple[str, ...] = ()
    repeat_kv: bool = False     # no effect: every head has its own k and v
    attn_mask: str = "causal"   # "causal" | "block_causal"
    eos_id: int | None = None
    depth_init: bool = True
    mtp_layers: int = 0
    mtp_loss_weight: float = 0.3

    def is_moe_layer(self, i: int) -> bool:
        return self.moe is not None and i >= self.n_dense_layers

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_dim + self.qk_rope_dim

    def softmax_scale(self) -> float:
        scale = self.qk_head_dim ** -0.5
        s = self.rope_scaling
        if isinstance(s, YarnScaling) and s.mscale_all_dim:
            scale *= yarn_mscale(s.factor, s.mscale_all_dim) ** 2
        return scale

    def mla_shape(self) -> MLAShape:
        return MLAShape(dim=self.dim, n_heads=self.n_heads, q_lora_rank=self.q_lora_rank,
                        kv_lora_rank=self.kv_lora_rank, qk_nope_dim=self.qk_nope_dim, qk_rope_dim=self.qk_rope_dim,
                        v_head_dim=self.v_head_dim, norm_eps=self.norm_eps, softmax_scale=self.softmax_scale(),
                        backend=self.attn_backend, sdpa_kernels=self.sdpa_kernels)

    def shape(self) -> ModelShape:
        m = self.moe
        moe = {} if m is None else dict(
            moe_layers=sum(self.is_moe_layer(i) for i in range(self.n_layers)), n_experts=m.n_experts,
            top_k=m.top_k, moe_hidden=m.hidden_dim, n_shared_experts=m.n_shared_experts, router_bias=m.gate_bias)
        return ModelShape(n_layers=self.n_layers, dim=self.dim, n_heads=self.n_heads, n_kv_heads=self.n_heads,
                          head_dim=self.qk_head_dim, ffn_hidden=self.hidden_dim, vocab_size=self.vocab_size,
                          tie_embeddings=self.tie_embeddings, kv_lora_rank=self.kv_lora_rank,
                          q_lora_rank=self.q_lora_rank, rope_head_dim=self.qk_rope_dim, v_head_dim=self.v_head_dim,
                          mtp_layers=self.mtp_layers, **moe)
