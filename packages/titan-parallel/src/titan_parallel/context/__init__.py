"""Context parallel: ring attention (torch's, over SDPA) and Ulysses all-to-all attention."""

from titan_parallel.context.ctx import context_parallel_ctx
from titan_parallel.context.sharding import (
    causal_work_per_rank,
    load_balance_indices,
    shard_sequence,
    unshard_sequence,
)
from titan_parallel.context.ulysses import apply_ulysses, heads_to_seq, seq_to_heads
from titan_parallel.context.validate import CP_METHODS, ROTATE_METHODS, validate_cp

__all__ = [
    "CP_METHODS",
    "ROTATE_METHODS",
    "apply_ulysses",
    "causal_work_per_rank",
    "context_parallel_ctx",
    "heads_to_seq",
    "load_balance_indices",
    "seq_to_heads",
    "shard_sequence",
    "unshard_sequence",
    "validate_cp",
]
