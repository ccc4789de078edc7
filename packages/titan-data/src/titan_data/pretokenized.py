"""Mode 2, pre-tokenized: windows taken by index from a token store in a seeded per-epoch order.

Global sample g (counted over the whole run, all ranks) is window perm_e(g mod N) of epoch
e = g // N, where N is the number of windows and perm_e a seeded permutation. Data-parallel rank
r's k-th batch is global samples start + [(k*dp + r)*B, (k*dp + r + 1)*B). The state is just
`start` (global samples consumed), so every layout with the same global batch dp*B (and any number
of micro-batches per step) sees the same samples per optimizer step, and a checkpoint resumes on
any data-parallel degree.
"""

from __future__ import annotations

import numpy as np
import torch

from titan_data.errors import DataError
from titan_data.loader_base import BatchCounter, TokenLoader
from titan_data.permutation import epoch_key, permute
from titan_data.tokens import TokenStore


def global_windows(samples: np.ndarray, num_windows: int, seed: int) -> np.ndarray:
    """Window index of each global sample number."""
    epochs, pos = np.divmod(np.asarray(samples, dtype=np.int64), num_windows)
    out = np.empty_like(pos)
    for e in np.unique(epochs).tolist():
        m = epochs == e
        out[m] = permute(pos[m], num_windows, epoch_key(seed, e))
    return out


class _Batches(torch.utils.data.Dataset):
    """Batch k (relative to a starting sample) for one rank: workers compute batches by index."""

    def __init__(self, store: TokenStore, start: int, seq_len: int, batch: int, dp_rank: int, dp: int, seed: int):
        self.store, self.start, self.seq_len, self.batch = store, start, seq_len, batch
        self.dp_rank, self.dp, self.seed = dp_rank, dp, seed
        self.num_windows = store.num_windows(seq_len)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.start + (k * self.dp + self.dp_rank) * self.batch
        idx = global_windows(np.arange(first, first + self.batch), self.num_windows, self.seed)
        arr = torch.from_numpy(self.store.windows(idx, self.seq_len))
        return arr[:, :-1].contiguous(), arr[:, 1:].contiguous()

    def __len__(self) -> int:  # only used by finite passes
        return max(0, (self.num_windows - self.start) // (self.dp * self.batch))


class PretokenizedLoader(TokenLoader):
    """Layout-independent loader over a TokenStore (see the module docstring)."""

    mode = "pretokenized"

    def __init__(self, store: TokenStore, *, seq_len: int, local_batch_size: int, dp_rank: int,
                 dp_world_size: int, seed: int, num_workers: int, infinite: bool):
        super().__init__(seq_len=seq_len, local_batch_size=local_batch_size, dp_rank=dp_rank,
                         dp_world_size=dp_world_size, num_workers=num_workers, infinite=infinite)
        self.store, self.seed = store, seed
        self.num_windows = store.num_windows(seq_len)
        if self.num_windows == 0:
            raise DataError(f"{store.source} has {store.total_tokens} tokens: fewer than seq_len + 1 = "
                            f"{seq_len + 1}, so not one window fits; use a smaller seq_len or more data")
        if not infinite and self.num_windows < dp_world_size * local_batch_size:
            raise DataError(
                f"{store.source} has {self.num_windows} windows of seq_len + 1 = {seq_len + 1} tokens, fewer "
                f"than one global batch (dp_world_size {dp_world_size} x local_batch_size {local_batch_size}): "
                "a single pass would yield nothing"
            )
        self.samples = 0  # global samples consumed, over all ranks

    @property
    def global_batch_size(self) -> int:
        return self.dp_world_size * self.local_batch_size

    @property
    def epoch(self) -> int:
        return self.samples // self.num_windows

    def _reset(self) -> None:
        self.samples = 0

    def _batches(self):
        ds = _Batches(self.store, self.samples, self.seq_len, self.local_batch_size, self.dp_rank,
                      self.dp_world_size, self.seed)
        stop = None if self.infinite else len(ds)
        if self.num_workers == 0:
            k = 0
            while stop is None or k < stop:
                batch = ds[k]
                self.samples += self.global_batch_size
                k += 1
                yield batch
            return
        loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=BatchCounter(stop), num_workers=self.num_workers)
        for batch in loader:
            self.samples += self.global_batch_size
            yield batch

    def state_dict(self) -> dict:
        return {"mode": self.mode, "samples": self.samples, "epoch": self.epoch, "seed": self.seed,
                "seq_len": self.seq_len, "num_windows": self.num_windows,
                "tokenizer": self.store.fingerprint, "global_batch_size": self.global_batch_size}

    def _load(self, state: dict) -> None:
        self._check_same(state, "seq_len", self.seq_len)
        self._check_same(state, "seed", self.seed, "pass the seed the run was started with")
        self._check_same(state, "num_windows", self.num_windows, "the token data changed since the state was saved")
        self._check_same(state, "tokenizer", self.store.fingerprint, "the data was tokenized differently")
        self.samples = int(state["samples"])
        self._finished = False
