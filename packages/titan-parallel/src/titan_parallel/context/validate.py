"""The checks a context-parallel request must pass, callable before any model is built."""

from __future__ import annotations

from titan_parallel.errors import ParallelConfigError, closest

CP_METHODS = ("ring", "ulysses")
ROTATE_METHODS = ("allgather", "alltoall")


def resolve_load_balance(method: str, load_balance: bool | None) -> bool:
    """Default: on for ring attention (causal work is uneven), off for Ulysses (nothing to balance)."""
    return method == "ring" if load_balance is None else bool(load_balance)


def validate_cp(*, cp_degree: int, seq_len: int, method: str = "ring", load_balance: bool | None = None,
                rotate: str = "allgather", n_heads: int | None = None, n_kv_heads: int | None = None,
                tp_degree: int = 1) -> None:
    """Raise ParallelConfigError when context parallel cannot run this way.

    ring: seq_len divisible by 2 x cp with load balancing (by cp without); rotate is "allgather"
    or "alltoall". ulysses: seq_len divisible by cp, and the heads each TP rank holds
    (n_heads / tp, and n_kv_heads / tp when the attention core sees unrepeated KV heads)
    divisible by cp, since Ulysses hands each CP rank a group of whole heads.
    """
    if method not in CP_METHODS:
        raise ParallelConfigError(
            f"unknown context parallel method {method!r}{closest(str(method), CP_METHODS)}; "
            f"known: {', '.join(CP_METHODS)}"
        )
    if rotate not in ROTATE_METHODS:
        raise ParallelConfigError(
            f"unknown ring-attention rotate method {rotate!r}{closest(str(rotate), ROTATE_METHODS)}; "
            f"known: {', '.join(ROTATE_METHODS)}"
        )
    if not isinstance(cp_degree, int) or cp_degree < 1:
        raise ParallelConfigError(f"cp degree must be a positive integer, got {cp_degree!r}")
    if cp_degree == 1:
        return
    balanced = resolve_load_balance(method, load_balance)
    if method == "ulysses" and balanced:
        raise ParallelConfigError(
            "load_balance=True does not apply to Ulysses context parallel: each rank attends over the "
            "whole sequence for its heads, so the work is already even and shards must stay contiguous"
        )
    multiple = 2 * cp_degree if balanced else cp_degree
    if seq_len % multiple:
        why = ("ring attention with head-tail load balancing cuts it into 2 x cp chunks" if balanced
               else "each CP rank holds an equal contiguous part")
        raise ParallelConfigError(
            f"seq_len={seq_len} is not divisible by {'2 x cp' if balanced else 'cp'} = {multiple} "
            f"(cp={cp_degree}; {why}); use a seq_len that is a multiple of {multiple}"
        )
    if method == "ulysses":
        for key, heads in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
            if heads is None:
                continue
            if heads % tp_degree:
                raise ParallelConfigError(f"{key}={heads} is not divisible by the tp degree {tp_degree}")
            local = heads // tp_degree
            if local % cp_degree:
                raise ParallelConfigError(
                    f"Ulysses context parallel splits heads across cp={cp_degree} ranks, but {key}={heads}"
                    f"{f' / tp={tp_degree}' if tp_degree > 1 else ''} = {local} heads per rank is not "
                    f"divisible by {cp_degree}; use method='ring' or a cp degree dividing {local}"
                )
