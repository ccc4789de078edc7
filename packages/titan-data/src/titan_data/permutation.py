"""A seeded permutation of [0, n) computed index by index, in O(1) memory for any n.

A balanced Feistel network is a bijection on [0, 4^h); "cycle walking" (re-applying it until the
value falls below n) restricts it to a bijection on [0, n). Each epoch gets its own key, so the
window order of epoch e depends only on (seed, e, n): not on ranks, workers or restarts.
"""

from __future__ import annotations

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_ROUNDS = 6


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64 finalizer: a fast, well-spread 64-bit hash (uint64 arithmetic wraps).
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_key(seed: int, epoch: int) -> int:
    """The Feistel key of one epoch of one seed."""
    return int(_mix(np.array([(seed * 0x9E3779B97F4A7C15 + epoch) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0])


def permute(index: np.ndarray, n: int, key: int) -> np.ndarray:
    """Positions `index` (each in [0, n)) mapped through the permutation of [0, n) chosen by `key`."""
    x = np.asarray(index, dtype=np.uint64)
    if n <= 1:
        return x.astype(np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    round_keys = [np.uint64(int(_mix(np.array([key + r], dtype=np.uint64))[0])) for r in range(_ROUNDS)]

    def feistel(v: np.ndarray) -> np.ndarray:
        left, right = v >> np.uint64(half), v & mask
        with np.errstate(over="ignore"):
            for rk in round_keys:
                left, right = right, left ^ (_mix(right ^ rk) & mask)
        return (left << np.uint64(half)) | right

    with np.errstate(over="ignore"):
        y = feistel(x)
        todo = y >= np.uint64(n)
        while todo.any():  # cycle walking: expected < 4 passes since 4^half < 4n
            y[todo] = feistel(y[todo])
            todo = y >= np.uint64(n)
    return y.astype(np.int64)
