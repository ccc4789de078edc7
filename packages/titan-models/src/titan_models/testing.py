"""Tiny model arguments for tests in any package (fast on one CPU thread)."""

from __future__ import annotations

from typing import Any

from titan_models.llama.args import LlamaArgs, with_overrides
from titan_models.registry import get_model_spec

TINY = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
                 max_seq_len=64)


def tiny_llama_args(**overrides: Any) -> LlamaArgs:
    """A ~0.13M-parameter Llama with grouped-query attention (4 heads over 2 kv heads), 2 layers,
    vocab 256, max_seq_len 64; `overrides` replace fields (unknown ones raise ModelConfigError)."""
    return with_overrides(TINY, overrides, where="tiny_llama_args")


# Per family: the same widths as TINY (and head_dim decoupled from dim where the family has it).
_TINY_FIELDS: dict[str, dict[str, Any]] = {
    "llama3": {},
    "qwen3": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=128, vocab_size=256,
                  max_seq_len=64, tie_embeddings=False),
}


def tiny_args(family: str, **overrides: Any):
    """Tiny args of any registered family (4 heads over 2 kv heads, 2 layers, vocab 256)."""
    spec = get_model_spec(family)
    if family == "llama3":
        return tiny_llama_args(**overrides)
    base = next(iter(spec.flavors.values()))
    return spec.override(base, {**_TINY_FIELDS[family], **overrides}, where=f"tiny_args({family!r})")


FAMILIES = tuple(_TINY_FIELDS)

__all__ = ["FAMILIES", "TINY", "tiny_args", "tiny_llama_args"]
