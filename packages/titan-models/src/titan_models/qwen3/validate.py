"""Checks of Qwen3Args against parallel degrees, before any memory is allocated."""

from __future__ import annotations

from collections.abc import Mapping

from titan_models.common.validate import family_problems, raise_if
from titan_models.qwen3.args import Qwen3Args

SIZES = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "vocab_size", "max_seq_len")  # fields that must be >= 1


def validate(args: Qwen3Args, *, tp: int = 1, cp: int = 1, pp: int = 1,
             sequence_parallel: bool = True, names: Mapping[str, str] | None = None) -> None:
    """Raise ModelConfigError listing every problem of `args` under these degrees (see llama.validate)."""
    problems, n = family_problems(args, SIZES, tp=tp, cp=cp, pp=pp, sequence_parallel=sequence_parallel,
                                  names=names)
    if args.moe is not None:
        if args.moe_step < 1:
            problems.append(f"moe_step={args.moe_step} must be >= 1")
        if not any(args.is_moe_layer(i) for i in range(args.n_layers)):
            problems.append(f"moe is set but no block is a MoE block (dense_layers={args.dense_layers}, "
                            f"moe_step={args.moe_step}, n_layers={args.n_layers})")
    raise_if(problems)
