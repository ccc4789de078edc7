"""An exponential moving average of the trained weights: shadow = decay * shadow + (1 - decay) * w
after every optimizer step. It lives beside the parameters in their own layout (each rank keeps
the average of its own shards, so FSDP / TP runs hold 1/N of it), is saved in checkpoints as the
"ema" state and is swapped in for validation samples."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    def __init__(self, parts: list[nn.Module], decay: float) -> None:
        from titan_models.init import canonical_name

        self.decay, self.parts = decay, parts
        # keys without wrapper prefixes (activation checkpointing, compile): a checkpoint resumes
        # whatever those settings are
        self.named = [(f"{i}.{canonical_name(n)}", p) for i, m in enumerate(parts)
                      for n, p in m.named_parameters() if p.requires_grad]
        with torch.no_grad():
            self.shadow = {n: p.detach().clone() for n, p in self.named}

    def reset(self) -> None:
        """Start the average at the current weights (after they are initialized or loaded)."""
        with torch.no_grad():
            for n, p in self.named:
                _local(self.shadow[n]).copy_(_local(p))

    @torch.no_grad()
    def update(self) -> None:
        shadows = [_local(self.shadow[n]) for n, _ in self.named]
        torch._foreach_lerp_(shadows, [_local(p) for _, p in self.named], 1.0 - self.decay)

    def _reshard(self) -> None:
        """Free FSDP's gathered copies (the root and the last block keep theirs after a forward),
        so the next forward gathers the shards as they are now."""
        from torch.distributed.fsdp import FSDPModule

        for part in self.parts:
            for m in part.modules():
                if isinstance(m, FSDPModule):
                    m.reshard()

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights in the model for the block's duration (in place: FSDP's own
        storage sees them), the trained ones back afterwards."""
        with torch.no_grad():
            saved = [_local(p).clone() for _, p in self.named]
            for n, p in self.named:
                _local(p).copy_(_local(self.shadow[n]))
        self._reshard()
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), s in zip(self.named, saved):
                    _local(p).copy_(s)
            self._reshard()

    # torch.distributed.checkpoint's Stateful protocol
    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for n, t in state["shadow"].items():
                if n in self.shadow and t is not self.shadow[n]:
                    _local(self.shadow[n]).copy_(_local(t))
