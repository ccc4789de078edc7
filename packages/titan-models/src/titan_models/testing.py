"""Tiny model arguments for tests in any package (fast on one CPU thread)."""

from __future__ import annotations

from typing import Any

from titan_models.llama.args import LlamaArgs, with_overrides

TINY = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
                 max_seq_len=64)


def tiny_llama_args(**overrides: Any) -> LlamaArgs:
    """A ~0.13M-parameter Llama with grouped-query attention (4 heads over 2 kv heads), 2 layers,
    vocab 256, max_seq_len 64; `overrides` replace fields (unknown ones raise ModelConfigError)."""
    return with_overrides(TINY, overrides, where="tiny_llama_args")


__all__ = ["TINY", "tiny_llama_args"]
