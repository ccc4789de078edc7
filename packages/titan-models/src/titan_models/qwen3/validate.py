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
    raise_if(decoder_problems(args, args.shape(), tp=tp, cp=cp, pp=pp, sequence_parallel=sequence_parallel, n=n))
