"""The GPT-OSS transformer: the common decoder with biased grouped-query attention, attention
sinks, alternating sliding-window / full layers, and biased clamped-SwiGLU experts.

    tok_embeddings -> layers["0".."N-1"] (attention_norm, attention.{wq,wk,wv,wo} (+ biases),
    attention.sdpa.sinks, ffn_norm, moe.{router.gate (+ bias), experts.{w1,w2,w3,b1,b2,b3}})
    -> norm -> output
"""

from __future__ import annotations

from titan_models.common.decoder import Decoder, DecoderBlock
from titan_models.common.moe import MoE
from titan_models.gpt_oss.args import GptOssArgs


class GptOssModel(Decoder):
    """GPT-OSS decoder (built on the current default device; see common.decoder)."""

    def __init__(self, args: GptOssArgs) -> None:
        def block(i: int) -> DecoderBlock:
            moe = MoE(args.dim, args.moe) if args.moe is not None else None
            return DecoderBlock(args.attention_shape(i), args.dim, args.norm_eps, moe=moe)

        super().__init__(args, block, args.head_dim)
