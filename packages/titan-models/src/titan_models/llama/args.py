"""Hyper-parameters of a Llama 3 model, its parameter count and its FLOPs per token."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from titan_models.errors import unknown_name

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 RoPE frequency scaling ("llama3" rope_type in Hugging Face configs).

    Wavelengths shorter than original_max_seq_len / high_freq_factor keep their frequency, those
    longer than original_max_seq_len / low_freq_factor are divided by `factor`, and the band in
    between is interpolated smoothly.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


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

    def num_params(self, model: nn.Module | None = None, *, exclude_embedding: bool = False) -> int:
        """Parameter count of `model` (tied weights once, DTensors at global size), or, with no
        model, computed from the shapes. `exclude_embedding` leaves out the token embedding table.
        """
        if model is not None:
            total = sum(p.numel() for p in model.parameters())  # parameters() dedups tied weights
            emb = getattr(model, "tok_embeddings", None)
            return total - (emb.weight.numel() if exclude_embedding and emb is not None else 0)
        embedding = self.vocab_size * self.dim
        total = embedding + self.n_layers * self._block_params() + self.dim  # + final norm
        if not self.tie_embeddings:
            total += self.vocab_size * self.dim
        return total - embedding if exclude_embedding else total

    def _block_params(self) -> int:
        q_and_o = 2 * self.dim * self.n_heads * self.head_dim
        k_and_v = 2 * self.dim * self.kv_heads * self.head_dim
        return q_and_o + k_and_v + 3 * self.dim * self.hidden_dim + 2 * self.dim

    def num_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token, the numerator of MFU.

            6 * (params - embedding table) + 12 * n_layers * n_heads * head_dim * seq_len

        6N: each weight does one multiply-add (2 FLOPs) forward and two backward. The table lookup
        does no math, so it is left out; the output projection is a matmul and is counted even when
        it shares its weight with the table (tie_embeddings). The second term is QK^T and AV
        (2 matmuls x 2 FLOPs x 3 for forward + backward) over the full seq_len x seq_len square,
        the usual convention, although a causal mask skips half of it.
        """
        dense = self.num_params(exclude_embedding=True)
        if self.tie_embeddings:
            dense += self.vocab_size * self.dim
        return float(6 * dense + 12 * self.n_layers * self.n_heads * self.head_dim * seq_len)


def with_overrides(args: LlamaArgs, overrides: dict[str, Any], *, where: str) -> LlamaArgs:
    """dataclasses.replace with a ModelConfigError naming an unknown field (and the closest one)."""
    names = [f.name for f in dataclasses.fields(LlamaArgs)]
    for key in overrides:
        if key not in names:
            raise unknown_name(f"{where} override", key, names)
    return dataclasses.replace(args, **overrides)
