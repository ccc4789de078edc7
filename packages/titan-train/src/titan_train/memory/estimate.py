"""Peak GPU memory of a training job, per rank, from its config: states + activations + buffers.

    peak_allocated = params + optimizer + max(A, B)
      A (start of backward) = grads already held (gradient accumulation, pipelining)
                              + activations kept by every in-flight microbatch (activations.py)
                              + the largest backward transient (loss head, or a layer's recompute)
                              + FSDP buffers: gathered root (embedding, norm, output) and blocks
                                (2 in flight, or every local block without resharding), the
                                output layer's unsharded gradient, a block's gradient buffers
      B (end of backward / optimizer step) = all gradients + the optimizer's temporaries
                              + gathered root and its gradient reduce-scatter buffers
    peak_reserved ~= 1.07 x peak_allocated (caching-allocator fragmentation measured on H100:
                     1.06 eager and compiled, 1.11 with activation checkpointing)

All sizes come from the layout (layout.py), the real shard sizes (sizes.py) and the analytic
activation formulas (activations.py). The worst pipeline rank is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from titan_train.memory.activations import ActShape, backward_transient, head_bytes, layer_bytes
from titan_train.memory.layout import Layout, RankStages
from titan_train.memory.sizes import ParamSizes

GIB = 1024**3
FRAGMENTATION = 1.07       # peak reserved / peak allocated (see module docstring)
RUNTIME_OVERHEAD_GIB = 1.5  # CUDA context, NCCL and cuBLAS workspaces: outside the allocator's count


@dataclass
class MemoryEstimate:
    """Predicted per-GPU memory in GiB, for the rank that needs the most."""

    params: float
    grads: float
    optimizer: float
    activations: float
    transient: float          # loss / backward / recompute working memory at the peak
    communication: float      # FSDP all-gather and reduce-scatter buffers, async-TP / CP buffers
    float8: float             # float8 weight casts (0 without float8)
    peak_allocated: float
    peak_reserved: float      # what torch.cuda.max_memory_reserved would show
    total: float              # peak_reserved + CUDA/NCCL runtime overhead: compare with the GPU
    pp_rank: int = 0
    phase: str = "backward start"
    notes: list[str] = field(default_factory=list)
    layout: str = ""

    def table(self) -> str:
        rows = [("parameters (sharded, fp32)", self.params), ("gradients", self.grads),
                ("optimizer states", self.optimizer), ("activations", self.activations),
                ("backward/loss working memory", self.transient),
                ("communication buffers", self.communication)]
        if self.float8:
            rows.append(("float8 casts", self.float8))
        lines = [f"Memory estimate per GPU ({self.layout}; worst pipeline rank {self.pp_rank}, "
                 f"peak at {self.phase}):"]
        lines += [f"  {name:<34}{value:8.2f} GiB" for name, value in rows]
        reserved = f"peak reserved (x{FRAGMENTATION:.2f})"
        lines += [f"  {'peak allocated':<34}{self.peak_allocated:8.2f} GiB",
                  f"  {reserved:<34}{self.peak_reserved:8.2f} GiB",
                  f"  {'+ CUDA context/NCCL = total':<34}{self.total:8.2f} GiB"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _rank_param_elems(sizes: ParamSizes, rank: RankStages, which: str) -> float:
    get = lambda g: getattr(g, which)  # noqa: E731
    blocks = sum(rank.blocks)
    dense = rank.dense if sizes.dense_block is not None else 0  # which of its blocks are dense (layout)
    n = (blocks - dense) * get(sizes.block) + (dense * get(sizes.dense_block) if dense else 0)
    if rank.has_embedding:
        n += get(sizes.embedding)
    if rank.has_head:
        n += get(sizes.norm)
        if not (sizes.tied and rank.has_embedding):
            n += get(sizes.output)
    return n


def _activation_bytes(layout: Layout, shape: ActShape, rank: RankStages) -> tuple[float, float]:
    """(kept activations, largest backward transient) in bytes for one pipeline rank."""
    tokens = layout.tokens_per_microbatch
    mode, option, compiled = layout.ac_mode, layout.ac_option, layout.compile_model
    per_stage = [n * layer_bytes(shape, mode, option, compiled=compiled, layers=n) for n in rank.blocks]
    stage_mean = sum(per_stage) / len(per_stage)
    kept = rank.in_flight * stage_mean * tokens
    if layout.pp > 1:  # each in-flight stage output waits for its gradient
        kept += rank.in_flight * shape.act_bytes * shape.dim / shape.tp * tokens
    head = head_bytes(shape, compiled=layout.compile_loss, has_output=rank.has_head, chunk=layout.loss_chunk)
    kept += head.retained * tokens + head.fixed_retained
    layer_t = backward_transient(shape, mode, option, compiled=compiled)
    if layout.cp > 1:  # ring attention: k and v of the whole sequence (all-gather) or of one peer
        chunks = layout.cp if layout.cp_rotate == "allgather" else 2
        layer_t += 2 * shape.act_bytes * shape.q_dim / shape.tp * chunks
    return kept, max(head.transient * tokens + head.fixed_transient, layer_t * tokens)


def _comm_bytes(layout: Layout, sizes: ParamSizes, rank: RankStages) -> tuple[float, float]:
    """(buffers at backward start, buffers at the end of backward) for FSDP, async TP."""
    c, r = layout.compute_bytes, layout.reduce_bytes
    if layout.persistent_casts:  # the bf16 copies are resident (_states); nothing is gathered or reduced
        return 0.0, 0.0
    if not (layout.fsdp or layout.casts):  # (one GPU's casts hold what FSDP's gathers hold, at most)
        ddp = 2 * 25 * 2**20 if layout.ddp else 0  # DDP's gradient buckets
        return ddp, ddp
    fp8_saving = (c - 1) * sizes.block.float8 if layout.float8_all_gather else 0
    block_gathered = sizes.block.gathered * c - fp8_saving
    root = _rank_param_elems(sizes, RankStages(0, (0,), rank.has_embedding, rank.has_head, 1), "gathered")
    blocks_held = 2 if layout.reshard_after_forward else sum(rank.blocks)
    grad_buffers = sizes.block.gathered * (c + r)  # unsharded grad + reduce-scatter input
    output_grad = sizes.output.gathered * c if rank.has_head else 0
    start = root * c + blocks_held * block_gathered + grad_buffers + output_grad
    end = root * (c + r) + block_gathered + grad_buffers
    if layout.async_tp:  # symmetric-memory workspaces for fused all-gather + matmul
        start += 2 * layout.compute_bytes * layout.shape.dim * layout.tokens_per_microbatch
    return start, end


def _states(layout: Layout, sizes: ParamSizes, rank: RankStages) -> tuple[float, float, float]:
    stored = _rank_param_elems(sizes, rank, "stored")
    if layout.cpu_offload:
        return 0.0, 0.0, 0.0
    per_param = {"AdamW": 2, "Adam": 2}.get(layout.optimizer, 1 if layout.momentum else 0)
    if layout.persistent_casts:  # float32 weights + their bf16 copies; bf16 gradients on the copies
        return stored * (4 + layout.compute_bytes), stored * layout.compute_bytes, stored * 4 * per_param
    return stored * 4, stored * 4, stored * 4 * per_param


def estimate_layout(layout: Layout, sizes: ParamSizes) -> MemoryEstimate:
    """The estimate for a planned layout and measured shard sizes (see estimate() in __init__)."""
    shape = ActShape.from_shape(layout.shape, repeat_kv=bool(getattr(layout.args, "repeat_kv", False)), tp=layout.tp,
                                loss_parallel=layout.loss_parallel,
                               act_bytes=layout.compute_bytes, float8=layout.float8)
    best: MemoryEstimate | None = None
    for rank in layout.ranks:
        params, grads, opt = _states(layout, sizes, rank)
        kept, transient = _activation_bytes(layout, shape, rank)
        comm_start, comm_end = _comm_bytes(layout, sizes, rank)
        gathered = _rank_param_elems(sizes, rank, "gathered")
        fp8 = 0.0
        if layout.float8:  # the block being computed: float8 copies of its weights and transposes
            fp8 = 2 * sizes.block.float8
        held_grads = grads if (layout.accum_steps > 1 or layout.pp > 1) else 0.0
        if layout.autocast:  # autocast keeps the bf16 copy of every weight it cast until backward ends
            comm_start += 2 * gathered
        a = held_grads + kept + transient + comm_start + fp8
        # foreach kernels make a temporary per state tensor; fused ones do not
        fused = layout.optimizer_impl == "fused" or layout.persistent_casts
        opt_temp = 0.0 if fused else 4 * _rank_param_elems(sizes, rank, "stored")
        b = grads + opt_temp + comm_end
        allocated = params + opt + max(a, b)
        phase = "backward start" if a >= b else "optimizer step"
        est = MemoryEstimate(
            params=params / GIB, grads=(held_grads if a >= b else grads) / GIB, optimizer=opt / GIB,
            activations=(kept if a >= b else 0.0) / GIB, transient=(transient if a >= b else opt_temp) / GIB,
            communication=(comm_start if a >= b else comm_end) / GIB, float8=(fp8 if a >= b else 0.0) / GIB,
            peak_allocated=allocated / GIB, peak_reserved=allocated * FRAGMENTATION / GIB,
            total=allocated * FRAGMENTATION / GIB + RUNTIME_OVERHEAD_GIB, pp_rank=rank.pp_rank, phase=phase)
        est.notes.append(f"{gathered / 1e9:.2f}B parameters per rank before FSDP sharding; "
                         f"{layout.tokens_per_microbatch} tokens per microbatch; {rank.in_flight} in flight")
        if layout.persistent_casts:
            est.notes.append("optimizer.fused_casts: parameters include their bf16 copies; gradients are bf16")
        if best is None or est.peak_allocated > best.peak_allocated:
            best = est
    assert best is not None
    return best
