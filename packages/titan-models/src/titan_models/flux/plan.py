"""Flux's tensor-parallel plan, as torch ParallelStyle objects (imports torch.distributed.tensor:
the spec imports this module lazily).

Megatron layout per attention and per MLP: q/k/v and the MLP input split their output features
(heads stay whole on a rank: the model reads head counts from the projections), the output
projections split their input features and all-reduce. In a single block the attention output
`attn.wo` and the MLP output `mlp.w2` are both row-parallel, their reduced outputs summed (the
bias, on mlp.w2 only, added once after the reduction). The per-head q/k RMSNorms see this rank's
heads: their weights are replicated with the heads dim (2) marked as the sharded one, so each
rank's partial weight gradient is summed. Modulations, embedders and the final layer are
replicated (absent from the plan): they work on the conditioning vector or on the residual
stream, which every rank holds whole (as Replicate DTensors, taking and giving plain tensors).

No sequence parallel: the residual stream is replicated (the norms are weightless LayerNorms and
the modulation indexes the full width), so the sequence_parallel flag is ignored. No loss parallel:
the output is a velocity, not logits over a vocabulary.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
)


def _attention(prefix: str) -> dict[str, ParallelStyle]:
    heads = dict(sequence_dim=2, use_local_output=True)
    return {f"{prefix}.wq": ColwiseParallel(), f"{prefix}.wk": ColwiseParallel(), f"{prefix}.wv": ColwiseParallel(),
            f"{prefix}.q_norm": SequenceParallel(**heads), f"{prefix}.k_norm": SequenceParallel(**heads),
            f"{prefix}.wo": RowwiseParallel()}


def _mlp(prefix: str) -> dict[str, ParallelStyle]:
    return {f"{prefix}.w1": ColwiseParallel(), f"{prefix}.w2": RowwiseParallel()}


def flux_tp_plan(model: nn.Module, *, sequence_parallel: bool = True,
                 loss_parallel: bool = True) -> dict[str, ParallelStyle]:
    """Module name -> ParallelStyle for a FluxModel (sequence_parallel / loss_parallel ignored:
    see the module docstring). Blocks are named by index ("blocks.3.attn.wq"), not "blocks.*":
    the list holds two block kinds, and a pattern one kind lacks makes torch's parallelize_module
    warn once per block."""
    plan: dict[str, ParallelStyle] = {}
    for i, block in enumerate(getattr(model, "blocks", ())):
        if hasattr(block, "img_attn"):  # double block
            for stream in ("img", "txt"):
                plan.update(_attention(f"blocks.{i}.{stream}_attn"))
                plan.update(_mlp(f"blocks.{i}.{stream}_mlp"))
        else:
            plan.update(_attention(f"blocks.{i}.attn"))
            plan.update(_mlp(f"blocks.{i}.mlp"))
    # Everything else with parameters (embedders, modulations, the final layer) becomes replicated
    # DTensors too: an optimizer's foreach kernels refuse a mix of DTensor and plain parameters
    # (TP without FSDP), and the gradients of replicated weights are complete on every rank.
    from titan_models.common.plan import Replicated

    for name, module in model.named_modules():
        if name and name not in plan and any(True for _ in module.parameters(recurse=False)):
            plan[name] = Replicated()
    return plan
