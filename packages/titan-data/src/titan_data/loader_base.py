"""What every Titan data loader shares: iteration, restart of finite passes, state checks."""

from __future__ import annotations

import abc
from collections.abc import Iterator

import torch

from titan_data.errors import DataError


class BatchCounter(torch.utils.data.Sampler):
    """Batch indices 0, 1, 2, ... (up to `stop`, or forever): a map-style batch dataset's sampler,
    so DataLoader workers hand batches back in index order."""

    def __init__(self, stop: int | None):
        self.stop = stop

    def __iter__(self):
        k = 0
        while self.stop is None or k < self.stop:
            yield k
            k += 1


class ResumableLoader(abc.ABC):
    """The protocol every Titan loader shares: its own iterator, an exact-resume state, and a finite
    pass (`infinite=False`) that ran out starting afresh when iterated again (`for batch in
    val_loader:` evaluates the whole split each time). Subclasses set `mode` and `_it`/`_finished`
    through `_init_iteration()`."""

    mode: str

    def _init_iteration(self) -> None:
        self._it: Iterator | None = None
        self._finished = False

    # -- subclasses --------------------------------------------------------------------------
    @abc.abstractmethod
    def _batches(self) -> Iterator:
        """Batches from the current state on, updating the state as each one is handed out."""

    @abc.abstractmethod
    def _reset(self) -> None:
        """Back to the start of the data (a fresh finite pass)."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Plain ints/strs/lists/dicts (JSON-able): where the next batch starts."""

    @abc.abstractmethod
    def _load(self, state: dict) -> None: ...

    # -- shared ------------------------------------------------------------------------------
    def load_state_dict(self, state: dict) -> None:
        """Resume: the next batch is the one the saved loader would have yielded next."""
        if not isinstance(state, dict) or state.get("mode") != self.mode:
            got = state.get("mode") if isinstance(state, dict) else type(state).__name__
            raise DataError(f"cannot load a {got!r} data loader state into a {self.mode!r} loader")
        self._check_state(state)
        self.close()
        self._load(state)
        self._finished = False

    def _check_state(self, state: dict) -> None:  # noqa: B027 (optional hook, not abstract)
        """Checks of a state before it is loaded (subclasses: the keys that must match)."""

    def _check_same(self, state: dict, key: str, mine: object, why: str = "") -> None:
        if state.get(key) != mine:
            raise DataError(f"data loader state has {key}={state.get(key)!r}, this loader has {key}={mine!r}"
                            + (f": {why}" if why else ""))

    def __iter__(self):
        if self._finished:
            self._finished = False
            self._reset()
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._batches()
        try:
            return next(self._it)
        except StopIteration:
            self._it = None
            self._finished = True
            raise

    def close(self) -> None:
        """Stop worker processes (also done when the loader is garbage collected)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class TokenLoader(ResumableLoader):
    """Yields `(inputs, labels)` LongTensors of shape [local_batch_size, seq_len].

    Labels are the inputs shifted by one (both cut from one window of seq_len + 1 tokens). The
    loader is its own iterator, so `next(loader)` may be called several times per optimizer step
    (gradient accumulation).
    """

    def __init__(self, *, seq_len: int, local_batch_size: int, dp_rank: int, dp_world_size: int,
                 num_workers: int, infinite: bool):
        self.seq_len = seq_len
        self.local_batch_size = local_batch_size
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.num_workers = num_workers
        self.infinite = infinite
        self._init_iteration()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(seq_len={self.seq_len}, local_batch_size={self.local_batch_size}, "
                f"dp_rank={self.dp_rank}, dp_world_size={self.dp_world_size}, num_workers={self.num_workers})")
