"""The Llama 3 transformer with Meta's module names (the common decoder, Llama's blocks).

    tok_embeddings -> layers["0".."N-1"] (attention_norm, attention.{wq,wk,wv,wo}, ffn_norm,
    feed_forward.{w1,w2,w3}) -> norm -> output
"""

from __future__ import annotations

from titan_models.common.attention import AttentionShape
from titan_models.common.decoder import Decoder, DecoderBlock
from titan_models.llama.args import LlamaArgs

TransformerBlock = DecoderBlock


def attention_shape(args: LlamaArgs) -> AttentionShape:
    return AttentionShape(dim=args.dim, n_heads=args.n_heads, n_kv_heads=args.kv_heads, head_dim=args.head_dim,
                          rope_layout="pairs", backend=args.attn_backend, sdpa_kernels=args.sdpa_kernels,
                          repeat_kv=args.repeat_kv)


class Transformer(Decoder):
    """Llama 3 decoder. Built on the current default device; a model built on a real device is
    initialized at once, one built on meta waits for to_empty() and init_weights()."""

    def __init__(self, args: LlamaArgs) -> None:
        shape = attention_shape(args)
        super().__init__(args, lambda i: DecoderBlock(shape, args.hidden_dim, args.norm_eps), args.head_dim)
