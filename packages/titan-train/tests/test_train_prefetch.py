"""The trainer's Prefetcher: batches fetched ahead are not counted as consumed by checkpoints."""

import pytest
import torch
from titan_train.trainer.prefetch import Prefetcher


class _Counting:
    """A loader yielding batch i as a tensor of i's; its state is the next index."""

    mode = "pretokenized"

    def __init__(self, n: int | None = None) -> None:
        self.i, self.n = 0, n

    def __iter__(self):
        return self

    def __next__(self):
        if self.n is not None and self.i >= self.n:
            raise StopIteration
        self.i += 1
        return torch.full((2, 3), self.i - 1), torch.full((2, 3), self.i - 1)

    def state_dict(self):
        return {"next": self.i}

    def load_state_dict(self, sd):
        self.i = sd["next"]


def test_prefetched_batches_are_not_in_the_checkpointed_state():
    p = Prefetcher(_Counting(), torch.device("cpu"))
    assert int(next(p)[0][0, 0]) == 0
    p.prefetch(2)                                   # batches 1 and 2 fetched ahead
    assert p.loader.i == 3 and p.state_dict() == {"next": 1}
    assert int(next(p)[0][0, 0]) == 1 and p.state_dict() == {"next": 1}   # one still pending
    assert int(next(p)[0][0, 0]) == 2 and p.state_dict() == {"next": 3}
    # resuming from a state taken while batches were pending yields exactly those batches
    resumed = Prefetcher(_Counting(), torch.device("cpu"))
    resumed.load_state_dict({"next": 1})
    assert [int(next(resumed)[0][0, 0]) for _ in range(3)] == [1, 2, 3]
    assert p.mode == "pretokenized"


def test_load_drops_pending_batches_and_end_of_data_surfaces_when_asked():
    p = Prefetcher(_Counting(n=2), torch.device("cpu"))
    p.prefetch(3)                                   # only 2 exist: StopIteration is deferred
    assert [int(next(p)[0][0, 0]) for _ in range(2)] == [0, 1]
    with pytest.raises(StopIteration):
        next(p)
    p.prefetch(1)
    p.load_state_dict({"next": 0})                  # a checkpoint load discards what was pending
    assert int(next(p)[0][0, 0]) == 0 and p.take_wait() >= 0.0 and p.take_wait() == 0.0
