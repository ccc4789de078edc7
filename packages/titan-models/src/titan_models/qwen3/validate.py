"""Checks of Qwen3Args against parallel degrees, before any memory is allocated."""

from __future__ import annotations

from collections.abc import Mapping

from titan_models.common.validate import check_options, decoder_problems, namer, positive, raise_if
from titan_models.qwen3.args import Qwen3Args


def validate(args: Qwen3Args, *, tp: int = 1, cp: int = 1, pp: int = 1,
             sequence_parallel: bool = True, names: Mapping[str, str] | None = None) -> None:
    """Raise ModelConfigError listing every problem of `args` under these degrees (see llama.validate)."""
    n = namer(names)
    check_options(args)
    raise_if(positive({k: getattr(args, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                                                       "hidden_dim", "vocab_size", "max_seq_len")},
                      {"tp": tp, "cp": cp, "pp": pp}, n))
    problems = decoder_problems(args, args.shape(), tp=tp, cp=cp, pp=pp, sequence_parallel=sequence_parallel, n=n)
    if args.moe is not None:
        problems += args.moe.problems(args.dim)
        if args.moe_step < 1:
            problems.append(f"moe_step={args.moe_step} must be >= 1")
        if not any(args.is_moe_layer(i) for i in range(args.n_layers)):
            problems.append(f"moe is set but no block is a MoE block (dense_layers={args.dense_layers}, "
                            f"moe_step={args.moe_step}, n_layers={args.n_layers})")
        if tp > 1 and not sequence_parallel:
            problems.append(f"a mixture of experts under {n('tp')}={tp} needs sequence parallel (each rank routes "
                            "its own tokens)")
    raise_if(problems)
