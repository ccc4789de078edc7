"""Attention masks built once per forward from the token ids, then passed down to every block.

Why the mask travels as a forward argument (Transformer -> block -> attention -> core) instead of
being stored on the modules: activation checkpointing recomputes a block during backward, and
pipeline schedules interleave micro-batches, so anything stored would by then belong to another
batch. An argument is saved and replayed with the block's other inputs.

    causal, sdpa          -> None (the core uses is_causal=True, which context parallel also knows)
    causal, flex          -> a BlockMask, cached per (sequence length, device); None when this
                             model part has no token ids: the core then builds it itself
    block_causal, flex    -> a BlockMask per batch: causal and within one document
    block_causal, sdpa    -> a dense bool [batch, 1, seq, seq] mask (reference path; O(seq^2) memory)
"""

from __future__ import annotations

import torch
from titan_models.errors import ModelConfigError

MASKS = ("causal", "block_causal")


def document_ids(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[batch, seq] index of the document each token belongs to; an EOS ends its own document."""
    is_eos = (tokens == eos_id).to(torch.int32)
    return torch.cumsum(is_eos, dim=1) - is_eos  # EOS counted from the next position on


def dense_block_causal(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """bool [batch, 1, seq, seq]: True where query q may attend to key k."""
    docs = document_ids(tokens, eos_id)
    seq = tokens.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril()
    same_doc = docs.unsqueeze(2) == docs.unsqueeze(1)
    return (same_doc & causal).unsqueeze(1)


def _causal_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def flex_block_mask(tokens: torch.Tensor | None, seq_len: int, device: torch.device,
                    eos_id: int | None):
    """A BlockMask: plain causal when eos_id is None, else causal within each document."""
    from torch.nn.attention.flex_attention import create_block_mask

    # Compiling the mask construction matters only for long sequences on accelerators.
    compile_kwargs = {"_compile": True} if device.type == "cuda" else {}
    if eos_id is None:
        return create_block_mask(_causal_mod, None, None, seq_len, seq_len, device=device,
                                 **compile_kwargs)
    docs = document_ids(tokens, eos_id)

    def document_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (docs[b, q_idx] == docs[b, kv_idx])

    return create_block_mask(document_causal, tokens.shape[0], None, seq_len, seq_len,
                             device=device, **compile_kwargs)


class MaskBuilder:
    """Builds the per-forward mask for one model's backend and mask kind (see module doc)."""

    def __init__(self, backend: str, kind: str, eos_id: int | None) -> None:
        self.backend, self.kind, self.eos_id = backend, kind, eos_id
        self._causal_cache: dict[tuple[int, str], object] = {}

    def __call__(self, tokens: torch.Tensor | None, device: torch.device):
        """tokens: the full-length token ids [batch, seq], or None when this model part has none."""
        if self.kind == "causal":
            if self.backend == "sdpa" or tokens is None:
                return None  # SDPA: is_causal; flex: the core builds its own causal mask
            return causal_block_mask(tokens.shape[1], device, self._causal_cache)
        if tokens is None:
            raise ModelConfigError(
                "attn_mask='block_causal' needs the token ids to find document boundaries: this "
                "model part has no tok_embeddings (a later pipeline stage), so call it as "
                "model(hidden, mask_tokens=token_ids)")
        if self.backend == "sdpa":
            return dense_block_causal(tokens, self.eos_id)
        return flex_block_mask(tokens, tokens.shape[1], device, self.eos_id)


def causal_block_mask(seq_len: int, device: torch.device, cache: dict):
    """A causal BlockMask for seq_len, built once per (seq_len, device) in `cache`."""
    key = (seq_len, str(device))
    if key not in cache:
        cache[key] = flex_block_mask(None, seq_len, device, None)
    return cache[key]
