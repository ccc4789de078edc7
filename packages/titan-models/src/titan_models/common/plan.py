"""The tensor-parallel plan of the common decoder (common.decoder), as torch ParallelStyle objects.

The only module of titan-models that imports torch.distributed.tensor; importing it needs no
process group. Apply with torch.distributed.tensor.parallel.parallelize_module(model, tp_mesh,
plan) before activation checkpointing / compile wrap the blocks (the keys name plain modules).

Megatron layout: wq/wk/wv/w1/w3 split their output features (heads), wo/w2 their input features,
so each block needs one all-reduce (or, with sequence parallel, one all-gather + one
reduce-scatter) per attention and per feed-forward. With sequence parallel, the norms and
residual stream hold a sequence shard (Shard(1)). With loss parallel, logits stay sharded over
the vocabulary (a DTensor, Shard(-1)) for torch's loss_parallel() cross-entropy. Per-head q/k norms
(Qwen 3) see this rank's heads: their weights are replicated with the heads dim (2) as the sharded
one, so each rank's weight gradient is a partial sum that is reduced like a sequence-parallel norm's.
Biases of wo / w2 (row-parallel) are added once, by torch's RowwiseParallel, after the reduction.
Multi-head latent attention (DeepSeek) has its own attention entries: see _mla_plan. Attention
sinks (GPT-OSS, one logit per head) are split with the heads.

Mixture-of-experts blocks keep their sequence shard: each TP rank routes its own tokens (no
all-gather before the router, no reduce-scatter after the experts). The router gate and shared
experts are replicated with the token dim as the sharded one (their gradients are partial sums,
reduced like a sequence-parallel norm's). The routed experts are not in this plan: each TP rank
runs them on its own tokens, so their weights must be sharded over an expert mesh that contains the
TP ranks (expert parallel and/or FSDP of the experts: titan_parallel.parallelize(experts=...)),
whose gradient reduction sums the TP ranks' shares.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
)


def decoder_tp_plan(model: nn.Module, *, sequence_parallel: bool = True,
                    loss_parallel: bool = True) -> dict[str, ParallelStyle]:
    """FQN pattern -> ParallelStyle for `model` (whole, or a pipeline stage: absent parts skipped).

    With tie_embeddings, both tok_embeddings and output shard the shared weight on dim 0; call
    model.tie_weights() after parallelize_module, which creates one parameter per module.
    """
    seq = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, ParallelStyle] = {}
    if getattr(model, "tok_embeddings", None) is not None:
        plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if getattr(model, "norm", None) is not None and sequence_parallel:
        plan["norm"] = SequenceParallel()
    if getattr(model, "output", None) is not None:
        plan["output"] = ColwiseParallel(
            input_layouts=seq,
            output_layouts=Shard(-1) if loss_parallel else Replicate(),
            use_local_output=not loss_parallel,
        )
    if sequence_parallel:
        plan.update({
            "layers.*.attention_norm": SequenceParallel(),
            # (x, rope, mask): only x is a sequence shard to gather.
            "layers.*.attention": PrepareModuleInput(
                input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None)),
            "layers.*.ffn_norm": SequenceParallel(),
            "layers.*.feed_forward": PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        })
    blocks = list(model.layers.values()) if getattr(model, "layers", None) is not None else []
    block = blocks[0] if blocks else None
    if any(hasattr(b, "moe") for b in blocks):
        if not sequence_parallel:
            raise ValueError("mixture-of-experts blocks need sequence_parallel=True (each rank routes its tokens)")
        plan.update({
            "layers.*.moe": PrepareModuleInput(  # a local sequence shard in, one out (the residual is local)
                input_layouts=(Shard(1),), desired_input_layouts=(Shard(1),), use_local_output=True),
            "layers.*.moe.router.gate": SequenceParallel(sequence_dim=0, use_local_output=True),
        })
        if any(getattr(b, "moe", None) is not None and b.moe.shared_experts is not None for b in blocks):
            # one entry per linear: SequenceParallel replicates only a module's own parameters
            for w in ("w1", "w2", "w3"):
                plan[f"layers.*.moe.shared_experts.{w}"] = SequenceParallel(sequence_dim=0, use_local_output=True)
    if block is not None and getattr(block.attention.sdpa, "sinks", None) is not None:
        plan["layers.*.attention.sdpa"] = ShardOwnParams()  # a sink per head: this rank's heads
    if block is not None and hasattr(block.attention, "wkv_a"):
        plan.update(_mla_plan(block.attention, seq, sequence_parallel))
    else:
        if block is not None and getattr(block.attention, "q_norm", None) is not None:
            plan.update({"layers.*.attention.q_norm": SequenceParallel(sequence_dim=2, use_local_output=True),
                         "layers.*.attention.k_norm": SequenceParallel(sequence_dim=2, use_local_output=True)})
        plan.update({
            "layers.*.attention.wq": ColwiseParallel(),
            "layers.*.attention.wk": ColwiseParallel(),
            "layers.*.attention.wv": ColwiseParallel(),
            "layers.*.attention.wo": RowwiseParallel(output_layouts=seq),
        })
    if any(hasattr(b, "feed_forward") for b in blocks):
        plan.update({
            "layers.*.feed_forward.w1": ColwiseParallel(),
            "layers.*.feed_forward.w2": RowwiseParallel(output_layouts=seq),
            "layers.*.feed_forward.w3": ColwiseParallel(),
        })
    if sequence_parallel and not any(hasattr(b, "feed_forward") for b in blocks):
        plan.pop("layers.*.feed_forward", None)
    return plan


def _mla_plan(attention: nn.Module, seq, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """Multi-head latent attention (common.mla): heads split, latent path replicated.

    wq (or wq_b) and wkv_b are column-parallel (this rank's heads), wo row-parallel. wq_a, q_norm,
    wkv_a and kv_norm compute the same on every rank from the gathered input (their weights are
    Replicate DTensors, so optimizers and clipping see one kind of parameter): their outputs'
    gradients arrive summed over the ranks (the column-parallel inputs' backward all-reduces),
    except the RoPE key every head shares, whose gradient on each rank comes from its own heads
    only: `shared_key` sums it over the ranks. The block's input is gathered to a plain tensor.
    """
    plan: dict[str, ParallelStyle] = {}
    if sequence_parallel:
        plan["layers.*.attention"] = PrepareModuleInput(
            input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None),
            use_local_output=True)
    q = "wq_b" if hasattr(attention, "wq_b") else "wq"
    for name in ("wq_a", "q_norm", "wkv_a", "kv_norm"):
        if hasattr(attention, name):
            plan[f"layers.*.attention.{name}"] = Replicated()
    plan.update({
        f"layers.*.attention.{q}": ColwiseParallel(),
        "layers.*.attention.wkv_b": ColwiseParallel(),
        "layers.*.attention.shared_key": SumGradient(),
        "layers.*.attention.wo": RowwiseParallel(output_layouts=seq),
    })
    return plan


class SumGradient(ParallelStyle):
    """Identity in forward; in backward the module input's gradient is summed over the mesh (for a
    replicated tensor that each rank uses with a different shard of the weights)."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        def mark_partial(_module, inputs):
            x = DTensor.from_local(inputs[0], device_mesh, [Replicate()], run_check=False)
            # to_local's gradient is declared Partial, so from_local's backward all-reduces it
            return (x.to_local(grad_placements=[Partial()]), *inputs[1:])

        module.register_forward_pre_hook(mark_partial)
        return module


class Replicated(ParallelStyle):
    """The module's own parameters as Replicate DTensors; it takes and returns plain tensors (the
    same values on every rank), so its gradients are the plain, already complete ones."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        from torch.distributed.tensor import distribute_module, distribute_tensor

        def replicate(_name, mod, mesh):
            for p_name, param in list(mod.named_parameters(recurse=False)):
                mod.register_parameter(p_name, nn.Parameter(distribute_tensor(param, mesh, [Replicate()])))

        def to_dtensor(_module, inputs, mesh):
            return tuple(DTensor.from_local(x, mesh, [Replicate()], run_check=False) for x in inputs)

        def to_local(_module, outputs, mesh):
            return outputs.to_local()

        return distribute_module(module, device_mesh, replicate, input_fn=to_dtensor, output_fn=to_local)


class ShardOwnParams(ParallelStyle):
    """The module's own parameters split on dim 0 over the mesh (e.g. one value per attention
    head, beside column-parallel q/k/v); inputs and outputs untouched (the module reads its
    shard with to_local)."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        from torch.distributed.tensor import distribute_tensor

        for name, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(name, nn.Parameter(distribute_tensor(param, device_mesh, [Shard(0)])))
        return module
