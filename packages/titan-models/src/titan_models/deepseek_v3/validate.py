"""Checks of DeepSeekV3Args against parallel degrees, before any memory is allocated."""

from __future__ import annotations

from collections.abc import Mapping

from titan_models.common.validate import family_problems, raise_if
from titan_models.deepseek_v3.args import DeepSeekV3Args

SIZES = ("dim", "n_layers", "n_heads", "kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim",
         "hidden_dim", "vocab_size", "max_seq_len")  # fields that must be >= 1


def validate(args: DeepSeekV3Args, *, tp: int = 1, cp: int = 1, pp: int = 1,
             sequence_parallel: bool = True, names: Mapping[str, str] | None = None) -> None:
    """Raise ModelConfigError listing every problem of `args` under these degrees (see llama.validate)."""
    problems, n = family_problems(args, SIZES, tp=tp, cp=cp, pp=pp, sequence_parallel=sequence_parallel,
                                  names=names)
    if args.qk_rope_dim % 2:
        problems.append(f"qk_rope_dim={args.qk_rope_dim} must be even for RoPE")
    if args.q_lora_rank < 0 or args.mtp_layers < 0 or args.n_dense_layers < 0:
        problems.append(f"q_lora_rank={args.q_lora_rank}, n_dense_layers={args.n_dense_layers} and "
                        f"mtp_layers={args.mtp_layers} must be >= 0")
    if args.moe is not None and args.n_dense_layers >= args.n_layers:
        problems.append(f"moe is set but n_dense_layers={args.n_dense_layers} >= n_layers={args.n_layers} "
                        "leaves no block for the experts")
    if args.mtp_layers:
        # The MTP modules read the whole sequence's tokens and the last stage's hidden states.
        for key, value in (("tp", tp), ("cp", cp), ("pp", pp)):
            if value > 1:
                problems.append(f"multi-token prediction (mtp_layers={args.mtp_layers}) does not combine with "
                                f"{n(key)}={value} yet: set mtp_layers=0 or {n(key)}=1")
        if args.max_seq_len <= args.mtp_layers + 1:
            problems.append(f"mtp_layers={args.mtp_layers} needs {n('max_seq_len')} > {args.mtp_layers + 1}")
    raise_if(problems)
