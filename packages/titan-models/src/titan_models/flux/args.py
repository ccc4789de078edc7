"""Hyper-parameters of a Flux (MMDiT) transformer, and its sizes as numbers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from titan_models.errors import ModelConfigError
from titan_models.spec import ModelShape, RunOptions, with_overrides  # noqa: F401 (with_overrides: re-exported)

TIME_DIM = 256  # width of the sinusoidal timestep / guidance embedding (fixed in BFL's models)


@dataclass(frozen=True)
class FluxArgs:
    """Shape and options of a Flux transformer (BFL's FLUX.1 layout).

    `depth` double-stream blocks (separate image and text weights, joint attention) then
    `depth_single_blocks` single-stream blocks (one set of weights over the concatenated text +
    image sequence, attention and MLP in parallel). Attention is 3-axis RoPE over (t, h, w) ids,
    `axes_dim` summing to the head width. The model sees packed latents (in_channels = the
    autoencoder's z channels x a 2x2 patch), T5 hidden states (context_in_dim) and a pooled CLIP
    vector (vec_in_dim). guidance_embed: the guidance-distilled variant (FLUX.1-dev) embeds the
    guidance scale beside the timestep. Frozen: derive variants with `ModelSpec.args_for`.
    """

    in_channels: int = 64
    out_channels: int | None = 64        # None: in_channels
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19                      # double-stream blocks
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    qkv_bias: bool = True                # biases of the double blocks' q/k/v (single blocks always have them)
    guidance_embed: bool = False
    sdpa_kernels: tuple[str, ...] = ()   # SDPA kernel priority (common.attention.SDPA_KERNELS); () torch's

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def out_dim(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def n_blocks(self) -> int:
        return self.depth + self.depth_single_blocks

    def shape(self) -> ModelShape:
        """Sizes for generic degree checks and estimates: every block counts as a layer; there is no
        vocabulary (vocab_size 0)."""
        return ModelShape(n_layers=self.n_blocks, dim=self.hidden_size, n_heads=self.num_heads,
                          n_kv_heads=self.num_heads, head_dim=self.head_dim, ffn_hidden=self.mlp_hidden,
                          vocab_size=0, tie_embeddings=False, qk_norm=True, attention_bias=self.qkv_bias)


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def block_params(a: FluxArgs) -> tuple[int, int]:
    """(one double block, one single block): parameters, q/k norms and modulations included."""
    h, m, norms = a.hidden_size, a.mlp_hidden, 2 * a.head_dim
    stream = (_linear(h, 6 * h) + 3 * _linear(h, h, a.qkv_bias) + norms + _linear(h, h)
              + _linear(h, m) + _linear(m, h))
    single = (_linear(h, 3 * h) + 3 * _linear(h, h) + norms + _linear(h, h, bias=False)
              + _linear(h, m) + _linear(m, h))
    return 2 * stream, single


def flux_params(a: FluxArgs, *, exclude_embedding: bool = False, active: bool = False) -> int:
    """Parameters of the model FluxModel(a) builds. Flux has no lookup table and no experts:
    exclude_embedding and active change nothing (accepted for ModelSpec.num_params)."""
    h = a.hidden_size
    double, single = block_params(a)
    embed = (_linear(a.in_channels, h) + _linear(a.context_in_dim, h)
             + _linear(TIME_DIM, h) + _linear(h, h) + _linear(a.vec_in_dim, h) + _linear(h, h))
    if a.guidance_embed:
        embed += _linear(TIME_DIM, h) + _linear(h, h)
    final = _linear(h, 2 * h) + _linear(h, a.out_dim)
    return embed + a.depth * double + a.depth_single_blocks * single + final


def flux_flops_per_token(a: FluxArgs, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token of the joint sequence (image latent tokens +
    text tokens) of length seq_len, the numerator of MFU:

        6 * (per-token block weights + img_in + txt_in + final linear) + 12 * n_blocks * heads * head_dim * seq_len

    6N: each weight a token meets does one multiply-add (2 FLOPs) forward and two backward. In a
    double block a token meets one stream's q/k/v, output and MLP weights (12 h^2 with ratio 4),
    in a single block q/k/v, MLP-in and the two output halves (also 12 h^2). The input and output
    linears are counted for every token although each meets only its own (img_in and the final
    linear for image tokens, txt_in for text tokens): an upper bound, < 0.3% of the total for the
    12B models. The modulations and embedder MLPs run once per sample, not per token, and are left
    out. The second term is QK^T and AV (2 matmuls x 2 FLOPs x 3 for forward + backward) over the
    full seq_len x seq_len square (Flux attention is not causal).
    """
    h, m = a.hidden_size, a.mlp_hidden
    stream = 3 * h * h + h * h + 2 * h * m
    single = 3 * h * h + h * m + h * h + m * h
    io = a.in_channels * h + a.context_in_dim * h + h * a.out_dim
    dense = a.depth * stream + a.depth_single_blocks * single + io
    return float(6 * dense + 12 * a.n_blocks * a.num_heads * a.head_dim * seq_len)


def configure(args: FluxArgs, options: RunOptions) -> FluxArgs:
    """A trainer's run options on FluxArgs. n_layers keeps the first n blocks (double blocks first);
    sdpa_kernels sets the kernel priority; attn_backend must be "sdpa" (Flux attention is full, not
    masked) and tie_embeddings False. The language-model options (max_seq_len, vocab_size, attn_mask,
    eos_id, repeat_kv, MoE and MTP settings) do not apply to Flux and are ignored."""
    if options.attn_backend not in (None, "sdpa"):
        raise ModelConfigError(f"attn_backend={options.attn_backend!r}: Flux supports 'sdpa' only")
    if options.tie_embeddings:
        raise ModelConfigError("tie_embeddings=True: Flux has no token embedding to tie")
    changes: dict = {}
    if options.sdpa_kernels is not None:
        changes["sdpa_kernels"] = tuple(options.sdpa_kernels)
    if options.n_layers is not None:
        n = options.n_layers
        if not 1 <= n <= args.n_blocks:
            raise ModelConfigError(f"n_layers={n}: this Flux model has {args.n_blocks} blocks "
                                   f"({args.depth} double + {args.depth_single_blocks} single); keep 1..{args.n_blocks}")
        # a shallower model of the same shape: n blocks split as the flavor splits them (flux-dev's
        # 19 double + 38 single: n = 18 keeps 6 + 12)
        changes["depth"] = min(args.depth, round(n * args.depth / args.n_blocks))
        changes["depth_single_blocks"] = n - changes["depth"]
    return dataclasses.replace(args, **changes)
