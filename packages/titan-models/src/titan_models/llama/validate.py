"""Checks of LlamaArgs against parallel degrees, before any memory is allocated."""

from __future__ import annotations

from collections.abc import Mapping

from titan_models.common.validate import check_options, decoder_problems, namer, positive, raise_if
from titan_models.llama.args import LlamaArgs


def validate(args: LlamaArgs, *, tp: int = 1, cp: int = 1, pp: int = 1,
             sequence_parallel: bool = True, names: Mapping[str, str] | None = None) -> None:
    """Raise ModelConfigError listing every problem of `args` under these degrees. `names`: how the
    caller spells a degree or an argument in its messages (e.g. {"tp": "parallelism.tensor_parallel_degree",
    "max_seq_len": "training.seq_len"})."""
    n = namer(names)
    check_options(args)
    raise_if(positive({k: getattr(args, k) for k in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of",
                                                       "max_seq_len")} | {"n_kv_heads": args.kv_heads},
                      {"tp": tp, "cp": cp, "pp": pp}, n))
    problems = []
    if args.dim % args.n_heads:
        problems.append(f"dim={args.dim} is not divisible by n_heads={args.n_heads}")
    if args.ffn_dim_multiplier is not None and args.ffn_dim_multiplier <= 0:
        problems.append(f"ffn_dim_multiplier={args.ffn_dim_multiplier} must be > 0")
    scaling = args.rope_scaling
    if scaling is not None and (scaling.factor <= 0 or scaling.high_freq_factor <= scaling.low_freq_factor):
        problems.append(f"rope_scaling={scaling} needs factor > 0 and high_freq_factor > low_freq_factor")
    problems += decoder_problems(args, args.shape(), tp=tp, cp=cp, pp=pp, sequence_parallel=sequence_parallel, n=n)
    raise_if(problems)
