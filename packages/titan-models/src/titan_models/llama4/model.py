"""The Llama 4 transformer (text): the common decoder with NoPE / chunked-RoPE layers and
interleaved MoE blocks with a shared expert.

    tok_embeddings -> layers["0".."N-1"] (attention_norm, attention.{wq,wk,wv,wo}, ffn_norm,
    feed_forward.{w1,w2,w3} or moe.{router.gate, experts.{w1,w2,w3}, shared_experts.{w1,w2,w3}})
    -> norm -> output
"""

from __future__ import annotations

from titan_models.common.decoder import Decoder, DecoderBlock
from titan_models.common.moe import MoE
from titan_models.llama4.args import Llama4Args


class Llama4Model(Decoder):
    """Llama 4 decoder (built on the current default device; see common.decoder)."""

    def __init__(self, args: Llama4Args) -> None:
        def block(i: int) -> DecoderBlock:
            moe = MoE(args.dim, args.moe) if args.is_moe_layer(i) else None
            return DecoderBlock(args.attention_shape(i), args.hidden_dim, args.norm_eps, moe=moe)

        super().__init__(args, block, args.head_dim)
