"""Checks of GptOssArgs against parallel degrees, before any memory is allocated."""

from __future__ import annotations

from collections.abc import Mapping

from titan_models.common.validate import family_problems, raise_if
from titan_models.gpt_oss.args import GptOssArgs

SIZES = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "max_seq_len")  # fields that must be >= 1


def validate(args: GptOssArgs, *, tp: int = 1, cp: int = 1, pp: int = 1,
             sequence_parallel: bool = True, names: Mapping[str, str] | None = None) -> None:
    """Raise ModelConfigError listing every problem of `args` under these degrees (see llama.validate)."""
    problems, n = family_problems(args, SIZES, tp=tp, cp=cp, pp=pp, sequence_parallel=sequence_parallel,
                                  names=names)
    if args.moe is None:
        problems.append("GPT-OSS blocks are mixtures of experts: moe must be set")
    if args.sliding_window is not None and args.sliding_window < 1:
        problems.append(f"sliding_window={args.sliding_window} must be >= 1 (None: full attention everywhere)")
    if args.attn_backend == "flex" and args.attn_mask == "block_causal":
        problems.append("attn_mask='block_causal' with attn_backend='flex' is not supported for GPT-OSS's sink "
                        "attention yet: use attn_backend='sdpa' (the exact path) or attn_mask='causal'")
    if cp > 1 and (args.sinks or args.sliding_window is not None):
        problems.append(f"context parallel ({n('cp')}={cp}) does not cover attention sinks or sliding windows "
                        "(torch's ring attention patches SDPA only): set cp to 1")
    raise_if(problems)
