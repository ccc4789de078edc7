"""Checks every decoder family shares: attention options, sizes, and the parallel degrees against
heads, sequence and layers. A family's validate adds its own checks and raises once for all."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from titan_models.common.attention import BACKENDS, SDPA_KERNELS
from titan_models.common.masks import MASKS
from titan_models.errors import ModelConfigError, unknown_name
from titan_models.spec import ModelShape


def namer(names: Mapping[str, str] | None) -> Callable[[str], str]:
    """How the caller spells a degree or an argument (e.g. "tp" -> "parallelism.tensor_parallel_degree")."""
    return lambda key: (names or {}).get(key, key)


def check_options(args) -> None:
    """Unknown attention backend, mask or SDPA kernel: an error naming the closest."""
    if args.attn_backend not in BACKENDS:
        raise unknown_name("attn_backend", args.attn_backend, BACKENDS)
    if args.attn_mask not in MASKS:
        raise unknown_name("attn_mask", args.attn_mask, MASKS)
    for kernel in args.sdpa_kernels:
        if kernel not in SDPA_KERNELS:
            raise unknown_name("SDPA kernel", kernel, SDPA_KERNELS)


def positive(values: Mapping[str, int], degrees: Mapping[str, int], n: Callable[[str], str]) -> list[str]:
    problems = [f"{key}={value} must be >= 1" for key, value in values.items() if value < 1]
    problems += [f"parallel degree {n(key)}={value} must be >= 1" for key, value in degrees.items() if value < 1]
    return problems


def decoder_problems(args, s: ModelShape, *, tp: int, cp: int, pp: int, sequence_parallel: bool,
                     n: Callable[[str], str]) -> list[str]:
    """What is wrong with a decoder of shape `s` (args: max_seq_len, attn_mask, eos_id) under these
    degrees; each problem names the values and what would be allowed."""
    problems = []
    if s.head_dim % 2:
        problems.append(f"head_dim={s.head_dim} must be even for RoPE")
    if s.n_heads % s.n_kv_heads:
        problems.append(f"n_heads={s.n_heads} is not divisible by n_kv_heads={s.n_kv_heads}")
    if args.attn_mask == "block_causal" and not (
            isinstance(args.eos_id, int) and 0 <= args.eos_id < s.vocab_size):
        problems.append(f"attn_mask='block_causal' needs eos_id in [0, vocab_size={s.vocab_size}), "
                        f"got eos_id={args.eos_id!r}")
    if tp > 1:
        heads = math.gcd(s.n_heads, s.n_kv_heads)
        allowed = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        for key, value in (("n_heads", s.n_heads), ("n_kv_heads", s.n_kv_heads)):
            if value % tp:
                problems.append(f"{key}={value} is not divisible by tensor-parallel degree {n('tp')}={tp} "
                                f"(degrees dividing n_heads={s.n_heads} and n_kv_heads={s.n_kv_heads}: {allowed})")
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
        if s.tie_embeddings:
            problems.append("tie_embeddings=True puts one weight on the first and last pipeline "
                            f"stage: not supported with {n('pp')}={pp}; set tie_embeddings=False")
        if pp > s.n_layers:
            problems.append(f"{n('pp')}={pp} stages for n_layers={s.n_layers} blocks: at most {s.n_layers}")
    return problems


def moe_problems(moe, dim: int, *, tp: int, sequence_parallel: bool, n: Callable[[str], str]) -> list[str]:
    """A mixture of experts' shape problems (MoEShape.problems), and TP without sequence parallel
    (each TP rank routes its own sequence shard). [] when moe is None."""
    if moe is None:
        return []
    problems = moe.problems(dim)
    if tp > 1 and not sequence_parallel:
        problems.append(f"a mixture of experts under {n('tp')}={tp} needs sequence parallel (each rank routes "
                        "its own tokens)")
    return problems


def family_problems(args, sizes: tuple[str, ...], *, tp: int, cp: int, pp: int, sequence_parallel: bool,
                    names: Mapping[str, str] | None) -> tuple[list[str], Callable[[str], str]]:
    """What every decoder family checks first: options (raises at once), the `sizes` fields and
    degrees >= 1 (raises at once), then the decoder and MoE problems under these degrees (listed).
    Returns (problems so far, the namer) for the family to add its own and raise_if."""
    n = namer(names)
    check_options(args)
    raise_if(positive({k: getattr(args, k) for k in sizes}, {"tp": tp, "cp": cp, "pp": pp}, n))
    problems = decoder_problems(args, args.shape(), tp=tp, cp=cp, pp=pp, sequence_parallel=sequence_parallel, n=n)
    problems += moe_problems(getattr(args, "moe", None), args.dim, tp=tp, sequence_parallel=sequence_parallel, n=n)
    return problems, n


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ModelConfigError("invalid model arguments: " + "; ".join(problems))
