"""The decoder-only transformer every language-model family here is built on.

    tok_embeddings -> layers["0".."N-1"] -> norm -> output

A family supplies its blocks (any nn.Module taking (x, rope, mask)) and its arguments; the decoder
holds the RoPE table, the per-forward masks, embedding tying and initialization by name.

Pipeline stages are made by deleting entries of `layers` (an nn.ModuleDict, so the remaining
blocks keep their names) and setting `tok_embeddings`, `norm` or `output` to None: the forward
then takes or returns hidden states [batch, seq, dim] at that end.

What the decoder reads from `args` (every family's args dataclass has these):
    vocab_size, dim, n_layers, norm_eps, tie_embeddings, max_seq_len, rope_theta, rope_scaling,
    attn_backend, attn_mask, eos_id, depth_init
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from titan_models import init as winit
from titan_models.common.attention import Attention, AttentionShape
from titan_models.common.masks import MaskBuilder
from titan_models.common.mla import MLA, MLAShape
from titan_models.common.mlp import FeedForward
from titan_models.common.rope import rope_table
from torch import nn


class DecoderBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then h + feed_forward(norm(h)) (or moe(norm(h)):
    a mixture-of-experts block has `moe` where a dense one has `feed_forward`). The attention is
    grouped-query (AttentionShape) or multi-head latent (MLAShape, DeepSeek)."""

    def __init__(self, attention: AttentionShape | MLAShape, hidden_dim: int, norm_eps: float,
                 feed_forward: nn.Module | None = None, *, moe: nn.Module | None = None) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(attention.dim, eps=norm_eps)
        self.attention = MLA(attention) if isinstance(attention, MLAShape) else Attention(attention)
        self.ffn_norm = nn.RMSNorm(attention.dim, eps=norm_eps)
        if moe is not None:
            self.moe = moe
        else:
            self.feed_forward = feed_forward if feed_forward is not None else FeedForward(attention.dim, hidden_dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask=None) -> torch.Tensor:
        # Three positional arguments always, so a TP PrepareModuleInput can name their layouts.
        h = x + self.attention(self.attention_norm(x), rope, mask)
        ffn = self.moe if "moe" in self._modules else self.feed_forward
        return h + ffn(self.ffn_norm(h))


class Decoder(nn.Module):
    """Built on the current default device; a model built on a real device is initialized at
    once, one built on meta waits for to_empty() and init_weights().

    block(i) builds block i; rope_dim is the width RoPE rotates (the head dim); extra: more
    top-level modules of the family (e.g. DeepSeek V3's multi-token prediction modules), set
    before the weights are initialized."""

    def __init__(self, args, block: Callable[[int], nn.Module], rope_dim: int,
                 extra: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.args = args
        self.rope_dim = rope_dim
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict({str(i): block(i) for i in range(args.n_layers)})
        self.norm: nn.RMSNorm | None = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output: nn.Linear | None = nn.Linear(args.dim, args.vocab_size, bias=False)
        for name, module in (extra or {}).items():
            setattr(self, name, module)
        # Not persistent: recomputed by init_weights, never checkpointed. Sequence on dim 0 so
        # context parallel can shard it together with the tokens.
        self.register_buffer("freqs_cis", self._rope_table(None), persistent=False)
        self._masks = MaskBuilder(args.attn_backend, args.attn_mask, args.eos_id)
        self.tie_weights()
        if self.freqs_cis.device.type != "meta":
            self.init_weights()

    def _rope_table(self, device: torch.device | None) -> torch.Tensor:
        a = self.args
        return rope_table(self.rope_dim, a.max_seq_len, a.rope_theta, a.rope_scaling, device)

    def tie_weights(self) -> None:
        """Make output.weight the embedding table again when tie_embeddings is set.

        Called after every device/dtype move (to_empty creates separate tensors for the two
        names); call it after anything else that replaces parameters, e.g. a TP plan.
        """
        if self.args.tie_embeddings and self.tok_embeddings is not None and self.output is not None:
            self.output.weight = self.tok_embeddings.weight

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.tie_weights()
        return self

    def forward(self, tokens: torch.Tensor, *, mask_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: int [batch, seq] (or hidden [batch, seq, dim] without tok_embeddings).

        Returns logits [batch, seq, vocab] (hidden states without `output`). `mask_tokens`: the
        token ids, needed for attn_mask="block_causal" by stages without tok_embeddings.
        """
        h = self.hidden(tokens, mask_tokens=mask_tokens)
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h

    def hidden(self, tokens: torch.Tensor, *, mask_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The blocks' output [batch, seq, dim] before the final norm (see forward)."""
        if self.tok_embeddings is not None:
            h = self.tok_embeddings(tokens)
            mask_tokens = tokens if mask_tokens is None else mask_tokens
        else:
            h = tokens
        mask = self._masks(mask_tokens, h.device)
        for layer in self.layers.values():
            # The whole table: attention takes the rows for its (possibly all-gathered) length.
            h = layer(h, self.freqs_cis, mask)
        return h

    def reset_rope(self) -> None:
        """Recompute the RoPE table in float32 (e.g. after casting the model to bf16 for inference)."""
        table = self._rope_table(self.freqs_cis.device)
        self.register_buffer("freqs_cis", table[: self.freqs_cis.shape[0]].contiguous(), persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialize every parameter from torch.initial_seed() and its name (see titan_models.init)
        and recompute the RoPE table. Independent of parameter order, of which layers exist and of
        sharding; run DTensor models under DTensor's implicit_replication()."""
        seed = torch.initial_seed()
        for fqn, param in self.named_parameters():
            name = winit.canonical_name(fqn)
            winit.fill_by_name(param, name, seed, self.init_rule(name))
        table = self._rope_table(self.freqs_cis.device)
        self.freqs_cis.copy_(table[: self.freqs_cis.shape[0]])
        for module in self.modules():  # e.g. MoE load-balance state
            if hasattr(module, "init_buffers"):
                module.init_buffers()

    def init_rule(self, name: str):
        """How parameter `name` is initialized (torchtitan's rules for Llama-style decoders)."""
        a = self.args
        scaled_dim = a.dim ** -0.5
        if name.endswith("norm.weight"):
            return winit.ones
        if name.endswith("attention.sdpa.sinks"):  # attention sinks (GPT-OSS), as HF initializes them
            return winit.normal(0.02)
        if name.endswith(".bias"):
            return winit.zeros
        if name == "tok_embeddings.weight":
            # Untied: unit normal (RMSNorm follows). Tied, the table is also the output projection
            # and gets its std, so initial logits stay O(1).
            return winit.trunc_normal(scaled_dim) if a.tie_embeddings else winit.normal(1.0)
        if name == "output.weight":
            return winit.trunc_normal(scaled_dim)
        parts = name.split(".")
        if parts[0] == "layers" and len(parts) >= 4:
            layer, rest = int(parts[1]), parts[2:]
            # Projections writing into the residual stream shrink with depth so the sum of
            # 2 * n_layers contributions keeps a stable scale.
            depth = 2 * (layer + 1) if a.depth_init else 2 * a.n_layers
            deep = winit.trunc_normal(0.02 / depth ** 0.5)
            if rest[:2] == ["moe", "router"]:
                return deep
            if rest[:2] == ["moe", "experts"] and len(rest) == 3:
                proj = rest[2]      # 3-D [experts, out, in] weights
                if proj in ("b1", "b2", "b3"):  # per-expert biases (GPT-OSS)
                    return winit.zeros
            elif rest[:2] == ["moe", "shared_experts"] and len(rest) == 4:
                proj = rest[2]
            elif len(rest) == 3:
                proj = rest[1]      # attention.wq.weight, feed_forward.w1.weight
            else:
                proj = ""
            if proj in ("wq", "wk", "wv", "w1", "wq_a", "wq_b", "wkv_a", "wkv_b"):  # (the last four: MLA)
                return winit.trunc_normal(0.02)
            if proj in ("wo", "w2", "w3"):
                return deep
        raise RuntimeError(f"no initialization rule for parameter {name!r}")
