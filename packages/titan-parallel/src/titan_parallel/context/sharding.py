"""How context parallel cuts a sequence across ranks (pure index logic, testable anywhere).

Causal attention makes late query positions cost more than early ones. Head-tail load
balancing cuts the sequence into 2*cp chunks and gives rank r chunks r and 2*cp-1-r, so every
rank does the same amount of attention work; torch's ring attention expects exactly this order.
Ulysses attends over the whole sequence per head group, so it shards contiguously.
"""

from __future__ import annotations

import torch

from titan_parallel.errors import ParallelConfigError


def load_balance_indices(seq_len: int, cp_degree: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Positions in head-tail order: rank r's shard is [r-th chunk, (2*cp-1-r)-th chunk]."""
    if seq_len % (2 * cp_degree):
        raise ParallelConfigError(
            f"seq_len={seq_len} is not divisible by 2 x cp = {2 * cp_degree}: head-tail load "
            "balancing cuts the sequence into 2 x cp equal chunks"
        )
    chunks = torch.arange(seq_len, device=device).view(2 * cp_degree, -1)
    order = [c for r in range(cp_degree) for c in (r, 2 * cp_degree - 1 - r)]
    return chunks[order].reshape(-1)


def shard_sequence(x: torch.Tensor, dim: int, cp_rank: int, cp_degree: int, *,
                   load_balance: bool = True) -> torch.Tensor:
    """This rank's part of `x` along `dim` (head-tail order when load_balance, else contiguous)."""
    seq_len = x.shape[dim]
    if load_balance:
        x = x.index_select(dim, load_balance_indices(seq_len, cp_degree, x.device))
    elif seq_len % cp_degree:
        raise ParallelConfigError(f"sequence length {seq_len} (dim {dim}) is not divisible by cp={cp_degree}")
    return x.chunk(cp_degree, dim=dim)[cp_rank]


def unshard_sequence(shards: list[torch.Tensor], dim: int, *, load_balance: bool = True) -> torch.Tensor:
    """The whole sequence from every rank's shard (rank order): inverse of shard_sequence."""
    x = torch.cat(shards, dim=dim)
    if load_balance:
        restore = torch.argsort(load_balance_indices(x.shape[dim], len(shards), x.device))
        x = x.index_select(dim, restore)
    return x


def causal_work_per_rank(seq_len: int, cp_degree: int, *, load_balance: bool = True) -> list[int]:
    """Query-key pairs each rank computes under a causal mask: equal for every rank when balanced."""
    positions = torch.arange(seq_len)
    owned = [shard_sequence(positions, 0, r, cp_degree, load_balance=load_balance) for r in range(cp_degree)]
    return [int((q + 1).sum()) for q in owned]  # query i attends to keys 0..i
