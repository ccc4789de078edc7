"""Fetch the next step's batches while the GPU still works on this one.

Why: the loop reads the loss (a GPU sync) after each logged step; if the next batches were only
fetched after that, the GPU would sit idle while the loader works. The step runner calls
`prefetch()` right after launching the optimizer step, so the loader's CPU time overlaps the
GPU's tail of the step.

Checkpoints must not see the prefetched batches as consumed: `state_dict()` is the loader's
state from before them, so a resume yields exactly the batches the uninterrupted run trained on.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def to_device(batch, device: torch.device):
    """Tensors (also inside a dict, e.g. an image batch) onto `device`; other values as they are."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if not isinstance(batch, torch.Tensor):
        return batch
    if device.type != "cuda":
        return batch.to(device)
    if batch.device.type == "cuda":
        return batch
    # pinned, so the copy runs behind the queued kernels instead of blocking the CPU
    return batch.pin_memory().to(device, non_blocking=True)


class Prefetcher:
    """Wraps a Titan loader: `next()` returns (inputs, labels) on `device`; `prefetch(n)` fetches
    n batches ahead and starts their host-to-device copies."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self._it = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._state_before: dict | None = None
        self._error: BaseException | None = None
        self.wait_s = 0.0  # time spent inside the loader since the last take_wait()

    @property
    def mode(self) -> str | None:
        return getattr(self.loader, "mode", None)

    def _pull(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.loader)
        t0 = time.perf_counter()
        try:
            inputs, labels = next(self._it)
        finally:
            self.wait_s += time.perf_counter() - t0
        return self._to_device(inputs), self._to_device(labels)

    def _to_device(self, t):
        return to_device(t, self.device)

    def prefetch(self, n: int) -> None:
        if self._pending or self._error is not None:
            return
        self._state_before = self.loader.state_dict()
        try:
            for _ in range(n):
                self._pending.append(self._pull())
        except StopIteration as e:  # a finite loader ran out: raised when the batch is asked for
            self._error = e

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pending:
            batch = self._pending.pop(0)
            if not self._pending:
                self._state_before = None
            return batch
        if self._error is not None:
            err, self._error, self._state_before = self._error, None, None
            raise err
        return self._pull()

    def __iter__(self) -> Prefetcher:
        return self

    def take_wait(self) -> float:
        waited, self.wait_s = self.wait_s, 0.0
        return waited

    # -- the checkpointed state is that of the batches handed out, not of those fetched ahead --
    def state_dict(self) -> dict[str, Any]:
        return self._state_before if self._state_before is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending, self._state_before, self._error, self._it = [], None, None, None
        self.loader.load_state_dict(state)
