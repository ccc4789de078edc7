"""Checks of LlamaArgs against parallel degrees, before any memory is allocated."""

from __future__ import annotations

import math
from collections.abc import Mapping

from titan_models.errors import ModelConfigError, unknown_name
from titan_models.llama.args import LlamaArgs

BACKENDS = ("sdpa", "flex")
SDPA_KERNELS = ("cudnn", "flash", "efficient", "math")
MASKS = ("causal", "block_causal")


def validate(args: LlamaArgs, *, tp: int = 1, cp: int = 1, pp: int = 1,
             sequence_parallel: bool = True, names: Mapping[str, str] | None = None) -> None:
    """Raise ModelConfigError listing every problem of `args` under these degrees. `names`: how the
    caller spells a degree or an argument in its messages (e.g. {"tp": "parallelism.tensor_parallel_degree",
    "max_seq_len": "training.seq_len"})."""
    def n(key: str) -> str:
        return (names or {}).get(key, key)

    if args.attn_backend not in BACKENDS:
        raise unknown_name("attn_backend", args.attn_backend, BACKENDS)
    if args.attn_mask not in MASKS:
        raise unknown_name("attn_mask", args.attn_mask, MASKS)
    for kernel in args.sdpa_kernels:
        if kernel not in SDPA_KERNELS:
            raise unknown_name("SDPA kernel", kernel, SDPA_KERNELS)
    problems = []
    for key in ("dim", "n_layers", "n_heads", "kv_heads", "vocab_size", "multiple_of", "max_seq_len"):
        if getattr(args, key) < 1:
            problems.append(f"{key.replace('kv_heads', 'n_kv_heads')}={getattr(args, key)} must be >= 1")
    for key, value in (("tp", tp), ("cp", cp), ("pp", pp)):
        if value < 1:
            problems.append(f"parallel degree {n(key)}={value} must be >= 1")
    if problems:
        raise ModelConfigError("invalid model arguments: " + "; ".join(problems))

    if args.dim % args.n_heads:
        problems.append(f"dim={args.dim} is not divisible by n_heads={args.n_heads}")
    elif args.head_dim % 2:
        problems.append(f"head_dim = dim / n_heads = {args.head_dim} must be even for RoPE")
    if args.n_heads % args.kv_heads:
        problems.append(f"n_heads={args.n_heads} is not divisible by n_kv_heads={args.kv_heads}")
    if args.ffn_dim_multiplier is not None and args.ffn_dim_multiplier <= 0:
        problems.append(f"ffn_dim_multiplier={args.ffn_dim_multiplier} must be > 0")
    scaling = args.rope_scaling
    if scaling is not None and (scaling.factor <= 0 or scaling.high_freq_factor <= scaling.low_freq_factor):
        problems.append(f"rope_scaling={scaling} needs factor > 0 and high_freq_factor > low_freq_factor")
    if args.attn_mask == "block_causal" and not (
            isinstance(args.eos_id, int) and 0 <= args.eos_id < args.vocab_size):
        problems.append(f"attn_mask='block_causal' needs eos_id in [0, vocab_size={args.vocab_size}), "
                        f"got eos_id={args.eos_id!r}")
    if tp > 1:
        heads = math.gcd(args.n_heads, args.kv_heads)
        allowed = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        for key, value in (("n_heads", args.n_heads), ("n_kv_heads", args.kv_heads)):
            if value % tp:
                problems.append(f"{key}={value} is not divisible by tensor-parallel degree {n('tp')}={tp} "
                                f"(degrees dividing n_heads={args.n_heads} and n_kv_heads={args.kv_heads}: {allowed})")
        if sequence_parallel and (args.max_seq_len // cp) % tp:
            problems.append(f"sequence parallel splits each rank's {n('max_seq_len')}/{n('cp')} = "
                            f"{args.max_seq_len // cp} tokens over {n('tp')}={tp}: not divisible")
    if cp > 1:
        if args.max_seq_len % (2 * cp):
            problems.append(f"context parallel needs {n('max_seq_len')}={args.max_seq_len} divisible by "
                            f"2 x {n('cp')} = {2 * cp} (load-balanced chunks)")
        if args.attn_mask == "block_causal":
            problems.append("attn_mask='block_causal' does not combine with context parallel (SDPA's dense "
                            "mask cannot be sharded, torch's ring attention does not cover flex, and the "
                            "document mask is built for one rank's shard): use attn_mask='causal'")
    if pp > 1:
        if args.tie_embeddings:
            problems.append("tie_embeddings=True puts one weight on the first and last pipeline "
                            f"stage: not supported with {n('pp')}={pp}; set tie_embeddings=False")
        if pp > args.n_layers:
            problems.append(f"{n('pp')}={pp} stages for n_layers={args.n_layers} blocks: at most {args.n_layers}")
    if problems:
        raise ModelConfigError("invalid model arguments: " + "; ".join(problems))
