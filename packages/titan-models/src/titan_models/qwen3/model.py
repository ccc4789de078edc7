"""The Qwen 3 transformer: the common decoder with per-head q/k RMSNorm and rotate-half RoPE.

    tok_embeddings -> layers["0".."N-1"] (attention_norm, attention.{wq,wk,wv,q_norm,k_norm,wo},
    ffn_norm, feed_forward.{w1,w2,w3} or moe.{router.gate, experts.{w1,w2,w3}}) -> norm -> output
"""

from __future__ import annotations

from titan_models.common.attention import AttentionShape
from titan_models.common.decoder import Decoder, DecoderBlock
from titan_models.common.moe import MoE
from titan_models.qwen3.args import Qwen3Args


def attention_shape(args: Qwen3Args) -> AttentionShape:
    return AttentionShape(dim=args.dim, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads, head_dim=args.head_dim,
                          qk_norm_eps=args.norm_eps if args.qk_norm else None, rope_layout="halves",
                          backend=args.attn_backend, sdpa_kernels=args.sdpa_kernels, repeat_kv=args.repeat_kv)


class Qwen3Model(Decoder):
    """Qwen 3 decoder, dense or MoE (built on the current default device; see common.decoder)."""

    def __init__(self, args: Qwen3Args) -> None:
        shape = attention_shape(args)

        def block(i: int) -> DecoderBlock:
            moe = MoE(args.dim, args.moe) if args.is_moe_layer(i) else None
            return DecoderBlock(shape, args.hidden_dim, args.norm_eps, moe=moe)

        super().__init__(args, block, args.head_dim)
