"""Mixture-of-experts bookkeeping of a run: once per optimizer step, the tokens each expert got are
summed over every rank that routed different tokens, the aux-loss-free biases move toward even load,
and the load is kept for the metrics.

Why once per optimizer step: with gradient accumulation or pipeline micro-batches the counts of all
micro-batches add up first; the bias must not move between micro-batches of one step (their
gradients would then come from different routings than the one the step is judged on).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from titan_models.common.moe import balance_update
from titan_parallel.modules import named_modules_clean, pattern_matches
from torch import nn


class LoadBalance:
    """Called by the step runner after backward, before the optimizer step."""

    def __init__(self, parts: list[nn.Module], moe_modules: str, *, coeff: float, routing_mesh=None,
                 pp_mesh=None, loss_scale: float = 1.0) -> None:
        self.layers: list[tuple[str, nn.Module]] = [
            (name, m) for part in parts for name, m in named_modules_clean(part).items()
            if pattern_matches(moe_modules, name) and hasattr(m, "tokens_per_expert")]
        self.coeff = coeff
        self.group = routing_mesh.get_group() if routing_mesh is not None and routing_mesh.size() > 1 else None
        self.pp_group = pp_mesh.get_group() if pp_mesh is not None and pp_mesh.size() > 1 else None
        self.last: torch.Tensor | None = None  # [layers, experts] summed counts of the last step
        for _, m in self.layers:
            m.aux_scale = loss_scale  # the aux loss is scaled like the loss (gradient accumulation)

    @torch.no_grad()
    def __call__(self) -> None:
        if not self.layers:  # a pipeline stage without MoE layers
            return
        counts = torch.stack([m.tokens_per_expert for _, m in self.layers])
        if self.group is not None:  # one all-reduce for every layer of this stage
            dist.all_reduce(counts, group=self.group)
        if self.coeff > 0:
            balance_update([m for _, m in self.layers], counts, self.coeff)
        for _, m in self.layers:
            m.tokens_per_expert.zero_()
        self.last = counts

    def metrics(self) -> dict[str, float]:
        """Per MoE layer: min / max / mean tokens per expert and the busiest expert's share of the
        layer's routed tokens; plus the worst share over all layers. Every pipeline stage's
        layers (gathered over the pipeline ranks; call it on every rank)."""
        mine = {}
        if self.last is not None:
            counts = self.last.float()
            share = counts.max(1).values / counts.sum(1).clamp_min(1)
            for (name, _), c, s in zip(self.layers, counts, share.tolist()):
                mine[name] = (c.min().item(), c.max().item(), c.mean().item(), s)
        if self.pp_group is not None:
            parts: list = [None] * dist.get_world_size(self.pp_group)
            dist.all_gather_object(parts, mine, group=self.pp_group)
            mine = {k: v for p in parts for k, v in p.items()}
        out: dict[str, float] = {}
        for name, (lo, hi, mean, s) in mine.items():
            out.update({f"moe_load/{name}/min": lo, f"moe_load/{name}/max": hi, f"moe_load/{name}/mean": mean,
                        f"moe_load/{name}/max_share": s})
        if mine:
            out["moe_max_share"] = max(v[3] for v in mine.values())
        return out
