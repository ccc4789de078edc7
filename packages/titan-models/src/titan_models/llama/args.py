"""Hyper-parameters of a Llama 3 model, its parameter count and its FLOPs per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from titan_models.common.rope import RopeScaling
from titan_models.spec import ModelShape, decoder_flops_per_token, decoder_params, with_overrides  # noqa: F401 (with_overrides re-exported)

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LlamaArgs:
    """Shape and options of a Llama 3 / 3.1 / 3.2 transformer.

    Frozen: derive variants with `ModelSpec.args_for(flavor, **overrides)` or
    `dataclasses.replace`. `max_seq_len` is the length of the RoPE table; trainers set it to the
    training sequence length.
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: same as n_heads (no grouped-query attention)
    vocab_size: int = 128256
    multiple_of: int = 256  # feed-forward hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    ffn_hidden_dim: int | None = None  # explicit hidden size (Hugging Face configs); wins if set
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 8192
    tie_embeddings: bool = False
    attn_backend: str = "sdpa"  # "sdpa" | "flex"
    # SDPA kernels to try, in this order ("cudnn", "flash", "efficient", "math"); () = torch's
    # default order. An execution choice, not a shape: checkpoints do not depend on it.
    sdpa_kernels: tuple[str, ...] = ()
    # Hand attention cores k/v repeated to the query heads, for cores that need equal head counts
    # (torch's ring attention). False: grouped-query attention inside the kernel (less memory).
    repeat_kv: bool = False
    attn_mask: str = "causal"  # "causal" | "block_causal" (documents separated at eos_id)
    eos_id: int | None = None
    depth_init: bool = True  # output projections of block i get std 0.02 / sqrt(2 (i + 1))

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden size: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def shape(self) -> ModelShape:
        return ModelShape(n_layers=self.n_layers, dim=self.dim, n_heads=self.n_heads, n_kv_heads=self.kv_heads,
                          head_dim=self.head_dim, ffn_hidden=self.hidden_dim, vocab_size=self.vocab_size,
                          tie_embeddings=self.tie_embeddings)

    def num_params(self, model: nn.Module | None = None, *, exclude_embedding: bool = False) -> int:
        """Parameter count of `model` (tied weights once, DTensors at global size), or, with no
        model, computed from the shapes. `exclude_embedding` leaves out the token embedding table.
        """
        if model is not None:
            total = sum(p.numel() for p in model.parameters())  # parameters() dedups tied weights
            emb = getattr(model, "tok_embeddings", None)
            return total - (emb.weight.numel() if exclude_embedding and emb is not None else 0)
        return decoder_params(self.shape(), exclude_embedding=exclude_embedding)

    def num_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (see titan_models.spec.decoder_flops_per_token)."""
        return decoder_flops_per_token(self.shape(), seq_len)

