"""Measured activation memory of a real model, to check and calibrate the analytic formulas.

Two meters, same question: how many bytes does the forward pass leave alive for backward, and how
high does memory go on the way?
- On CUDA, the caching allocator's own counters (memory_allocated / max_memory_allocated).
- On CPU (no allocator statistics), LiveBytes: a dispatch mode that records every tensor storage
  an op creates and checks, after each op, which of them are still alive. It sees exactly what
  autograd (or a checkpoint wrapper) keeps, so the eager and activation-checkpointing formulas
  can be validated without a GPU.

`layer_activation_bytes` builds the model twice (1 and 2 layers) and reports the difference, so
what one transformer layer keeps is separated from the embedding, final norm, logits and loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Tracks storages created by ops inside the mode: `live()` bytes now, `peak` so far."""

    def __init__(self) -> None:
        super().__init__()
        self._storages: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def live(self) -> int:
        dead = [k for k, (ref, _) in self._storages.items() if ref.expired()]
        for k in dead:
            del self._storages[k]
        return sum(n for _, n in self._storages.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views (t(), slices, reshapes) share an input's storage: not new memory.
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._storages and key not in inputs:
                    self._storages[key] = (StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, self.live())
        return out


@dataclass
class Measured:
    retained: int   # bytes alive after forward + loss (what backward will consume)
    peak: int       # highest bytes alive during forward, loss and backward, above the start


@contextlib.contextmanager
def _meter(device: torch.device) -> Iterator[Callable[[], tuple[int, int]]]:
    """Yields read() -> (bytes alive now, peak so far), both relative to entry."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: (torch.cuda.memory_allocated(device) - base, torch.cuda.max_memory_allocated(device) - base)
    else:
        mode = LiveBytes()
        with mode:
            yield lambda: (mode.live(), mode.peak)


def _default_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1))


def forward_backward_bytes(model: nn.Module, tokens: torch.Tensor, loss_fn: Callable | None = None,
                           *, warmup: bool = False) -> Measured:
    """Run model(tokens) -> loss -> backward once; bytes kept after the loss and the peak.

    Parameter gradients are set to None first (as the trainer does) and count toward the peak.
    warmup: run one untracked step first (compilation, cuBLAS workspaces, lazy buffers).
    """
    loss_fn = loss_fn or _default_loss
    labels = torch.roll(tokens, -1, dims=1)
    if warmup:
        loss_fn(model(tokens), labels).backward()
    for p in model.parameters():
        p.grad = None
    with _meter(tokens.device) as read:
        logits = model(tokens)
        loss = loss_fn(logits, labels)
        retained, _ = read()
        loss.backward()
        del logits, loss
        _, peak = read()
    return Measured(retained, peak)


def layer_activation_bytes(build: Callable[[int], nn.Module], tokens: torch.Tensor,
                           loss_fn: Callable | None = None, *, layers: tuple[int, int] = (1, 2),
                           warmup: bool = False) -> dict[str, float]:
    """Bytes one layer keeps for backward, and those of everything else (embedding, head, loss).

    build(n_layers) -> a ready model (dtype, AC, compile applied) on tokens.device; it is called
    with layers[0] and layers[1] layers and the difference, divided by the extra layers, is one
    layer's share (an average when only some layers are checkpointed). Returns per_layer, head
    (retained without layers), peak_over_retained (how far the smaller model's peak rises above
    what it retained: the loss and backward transients) and the raw numbers.
    """
    results = []
    for n_layers in layers:
        model = build(n_layers)
        results.append(forward_backward_bytes(model, tokens, loss_fn, warmup=warmup))
        del model
    small, large = results
    per_layer = (large.retained - small.retained) / (layers[1] - layers[0])
    return {"per_layer": per_layer, "head": small.retained - layers[0] * per_layer,
            "peak_over_retained": small.peak - small.retained,
            "retained": [small.retained, large.retained], "peak": [small.peak, large.peak]}
