"""Multi-token prediction bookkeeping of a run: the MTP loss is scaled like the training loss
(1 / gradient-accumulation steps) and its mean over the micro-batches since the last log, averaged
over the data-parallel ranks, is logged as `mtp_loss` (the same number in every layout; the model
adds its gradient itself, see titan_models.deepseek_v3.model)."""

from __future__ import annotations

import torch
from titan_mesh import dist_reduce_tensor
from torch import nn


class MTPLoss:
    def __init__(self, parts: list[nn.Module], loss_mesh=None, *, loss_scale: float = 1.0) -> None:
        self.models = [p for p in parts if getattr(p, "mtp_layers", None) is not None and hasattr(p, "pop_mtp_loss")]
        self.mesh = loss_mesh
        for m in self.models:
            m.mtp_scale = loss_scale

    def __bool__(self) -> bool:
        return bool(self.models)

    def metrics(self) -> dict[str, float]:
        """{"mtp_loss": value} over the training forwards since the last call (every rank calls
        it), or {}."""
        values = [v for v in (m.pop_mtp_loss() for m in self.models) if v is not None]
        if not values:
            return {}
        value = torch.stack(values).mean()
        if self.mesh is not None:
            value = dist_reduce_tensor(value, "mean", self.mesh)
        return {"mtp_loss": float(value)}
