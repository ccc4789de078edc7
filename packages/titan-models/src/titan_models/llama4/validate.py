"""Checks of Llama4Args against parallel degrees, before any memory is allocated."""

from __future__ import annotations

from collections.abc import Mapping

from titan_models.common.validate import family_problems, raise_if
from titan_models.llama4.args import Llama4Args

SIZES = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "vocab_size", "max_seq_len",
         "moe_step")  # fields that must be >= 1


def validate(args: Llama4Args, *, tp: int = 1, cp: int = 1, pp: int = 1,
             sequence_parallel: bool = True, names: Mapping[str, str] | None = None) -> None:
    """Raise ModelConfigError listing every problem of `args` under these degrees (see llama.validate)."""
    problems, n = family_problems(args, SIZES, tp=tp, cp=cp, pp=pp, sequence_parallel=sequence_parallel,
                                  names=names)
    if args.chunk_size is not None and args.chunk_size < 1:
        problems.append(f"chunk_size={args.chunk_size} must be >= 1 (None: causal attention in every layer)")
    if args.attn_backend == "flex" and args.attn_mask == "block_causal" and args.chunk_size is not None:
        problems.append("attn_mask='block_causal' with attn_backend='flex' and chunked layers is not supported "
                        "yet: use attn_backend='sdpa' or attn_mask='causal'")
    if cp > 1 and (args.chunk_size is not None or (args.temperature_tuning and args.nope_every > 0)):
        problems.append(f"context parallel ({n('cp')}={cp}) does not cover chunked attention or the NoPE "
                        "layers' position-dependent temperature (each rank would see only its shard's "
                        "positions): set cp to 1, or chunk_size=None and temperature_tuning=False")
    raise_if(problems)
