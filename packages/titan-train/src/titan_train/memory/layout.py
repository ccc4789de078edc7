"""What the estimator needs from a JobConfig and a world size, as plain data.

Degrees, batch arithmetic, precision and model arguments are the trainer's own plan
(titan_train.plan.make_plan), so the estimate describes the run the trainer would start; pipeline
stages come from titan-parallel's stage planner, placed as the trainer places them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from titan_train.config import JobConfig
from titan_train.errors import ConfigError
from titan_train.plan import RunPlan


@dataclass(frozen=True)
class RankStages:
    """One pipeline rank: its stages' block counts, whether it holds the embedding / the head,
    and how many (stage, microbatch) forwards it keeps alive at most before their backward."""

    pp_rank: int
    blocks: tuple[int, ...]
    has_embedding: bool
    has_head: bool
    in_flight: int  # stage-microbatches whose activations coexist (1 without PP)
    dense: int = 0  # of its blocks, the dense ones in a model that also has MoE blocks


def dense_blocks(run, names: list[str]) -> int:
    """How many of the block names ("layers.3") are dense blocks of a model with MoE blocks too
    (families whose args say `is_moe_layer(i)`; 0 for uniform models)."""
    shape = run.spec.shape(run.args)
    is_moe = getattr(run.args, "is_moe_layer", None)
    if not (0 < shape.moe_layers < shape.n_layers) or is_moe is None:
        return 0
    prefix = run.spec.blocks + "."
    return sum(1 for n in names if n.startswith(prefix) and not is_moe(int(n[len(prefix):].split(".")[0])))


@dataclass(frozen=True)
class Layout:
    """The run's plan (titan_train.plan, the trainer's own) and what only the estimate adds: the
    pipeline ranks, and the optimizer's states. The rest are views of the plan, by the names the
    estimate's formulas use."""

    run: RunPlan
    world_size: int
    schedule: str | None
    ranks: tuple[RankStages, ...]
    ac_mode: str
    ac_option: str
    compile_loss: bool
    loss_chunk: int  # training.loss_chunk_size (0: the plain head)
    optimizer: str
    optimizer_impl: str
    momentum: bool
    vocab_note: str

    # views of the plan
    @property
    def args(self) -> Any:
        return self.run.args

    @property
    def shape(self) -> Any:
        return self.run.spec.shape(self.run.args)

    @property
    def model_name(self) -> str:
        return self.run.spec.name

    dp_replicate = property(lambda self: self.run.dims.dp_replicate)
    dp_shard = property(lambda self: self.run.dims.dp_shard)
    cp = property(lambda self: self.run.dims.cp)
    tp = property(lambda self: self.run.dims.tp)
    pp = property(lambda self: self.run.dims.pp)
    local_batch = property(lambda self: self.run.batch.local_batch)
    seq_len = property(lambda self: self.run.batch.seq_len)
    accum_steps = property(lambda self: self.run.batch.accum_steps)
    microbatch = property(lambda self: self.run.batch.microbatch)
    compile_model = property(lambda self: self.run.parallel.compile is not None)
    float8 = property(lambda self: self.run.float8 is not None)
    float8_all_gather = property(lambda self: self.float8 and self.run.float8.fsdp_float8_all_gather)
    fsdp = property(lambda self: self.run.parallel.dp == "fsdp")
    casts = property(lambda self: self.run.precision.mode == "cast")  # one GPU: per-unit bf16 copies
    persistent_casts = property(lambda self: self.run.parallel.persistent_casts)  # optimizer.fused_casts
    ddp = property(lambda self: self.run.parallel.dp == "ddp")
    loss_parallel = property(lambda self: self.run.parallel.loss_parallel)
    async_tp = property(lambda self: self.run.parallel.async_tp)
    cpu_offload = property(lambda self: self.run.parallel.fsdp.cpu_offload)
    autocast = property(lambda self: self.run.precision.mode == "autocast")
    compute_bytes = property(lambda self: self.run.precision.compute_bytes)
    reduce_bytes = property(lambda self: 4 if self.run.precision.reduce_dtype == torch.float32 else 2)
    cp_rotate = property(lambda self: self.run.context.rotate if self.run.context else "allgather")

    @property
    def reshard_after_forward(self) -> bool:
        return self.run.parallel.fsdp.reshard_after_forward not in (False, "never")

    @property
    def tokens_per_microbatch(self) -> int:
        """Tokens one rank pushes through one forward (sequence split over CP)."""
        return self.microbatch * self.seq_len // self.cp


def _vocab(cfg: JobConfig, flavor_vocab: int) -> tuple[int, str]:
    """The vocabulary the trainer would use: model.vocab_size, else the tokenizer's (when it can be
    read here), else the flavor's (what the Llama 3 tokenizer has)."""
    if cfg.model.vocab_size > 0:
        return cfg.model.vocab_size, "model.vocab_size"
    path = cfg.model.tokenizer_path or cfg.model.hf_assets_path
    if path is None or Path(path).expanduser().exists():
        try:
            import titan_data

            tok = titan_data.load_tokenizer(path)
            return tok.vocab_size, "the bundled tokenizer" if path is None else f"tokenizer at {path}"
        except Exception:  # noqa: BLE001 - an unreadable tokenizer is the trainer's error to report
            pass
    return flavor_vocab, f"the flavor's default ({path} not readable here)"


def _in_flight(schedule: str, pp: int, rank: int, stages_per_rank: int, n_mb: int) -> int:
    """Most (stage, microbatch) forwards alive on `rank` before their backward, per schedule."""
    total = n_mb * stages_per_rank
    if schedule == "GPipe":
        return n_mb
    if schedule == "1F1B":
        return min(n_mb, pp - rank)
    if schedule == "LoopedBFS":
        return total
    if schedule in ("ZBVZeroBubble", "DualPipeV"):
        return min(total, 2 * pp - rank)
    # Interleaved1F1B / InterleavedZeroBubble: torch's warm-up of (v-1)*P + 2*(P-1-r) forwards,
    # plus the one that starts the steady state.
    return min(total, (stages_per_rank - 1) * pp + 2 * (pp - 1 - rank) + 1)


def _pipeline_ranks(run: RunPlan, order: list[str], n_mb: int) -> tuple[str, tuple[RankStages, ...]]:
    from titan_parallel.pipeline import SCHEDULES, plan_stages, resolve_schedule, stage_ids_for_rank

    from titan_train.trainer.pipeline import stage_names

    pp, spec = run.dims.pp, run.spec
    name, schedule = resolve_schedule(run.pipeline.schedule)
    split = stage_names(run, order)  # as the trainer's split()
    if split is not None:
        per_rank = len(split) // pp
    else:
        per_rank = 1 if SCHEDULES[name].min_stages_per_rank == 1 else 2
    plan = plan_stages(order, pp * per_rank, split_points=split)
    ranks = []
    for r in range(pp):
        ids = stage_ids_for_rank(r, pp, per_rank, schedule.placement)
        mods = [plan[i] for i in ids]
        ranks.append(RankStages(r, tuple(sum(m.startswith(spec.blocks + ".") for m in s) for s in mods),
                                any(spec.embedding in s for s in mods), any(spec.output in s for s in mods),
                                _in_flight(name, pp, r, per_rank, n_mb), dense_blocks(run, [m for s in mods for m in s])))
    return name, tuple(ranks)


def plan(cfg: JobConfig, world_size: int) -> Layout:
    """Layout of `cfg` on `world_size` GPUs; ConfigError for any layout the trainer would refuse."""
    import titan_models
    from titan_parallel import ParallelConfigError

    from titan_train.plan import make_plan

    spec = titan_models.get_model_spec(cfg.model.name)
    try:
        vocab, vocab_note = _vocab(cfg, spec.args_for(cfg.model.flavor).vocab_size)
        # estimates are for GPU runs: the trainer's own rules on a GPU
        run = make_plan(cfg, world_size=world_size, device_type="cuda", vocab_size=vocab)
    except titan_models.ModelConfigError as e:
        raise ConfigError(str(e)) from None
    schedule = None
    if run.pipeline is not None:
        try:
            schedule, ranks = _pipeline_ranks(run, spec.module_order(run.args), run.batch.local_batch // run.batch.microbatch)
        except ParallelConfigError as e:
            raise ConfigError(f"pipeline: {e}") from None
    else:
        n = spec.shape(run.args).n_layers
        ranks = (RankStages(0, (n,), True, True, 1, dense_blocks(run, [f"{spec.blocks}.{i}" for i in range(n)])),)
    o = cfg.optimizer
    return Layout(run=run, world_size=world_size, schedule=schedule, ranks=ranks,
                  ac_mode=cfg.activation_checkpoint.mode, ac_option=_ac_option(cfg),
                  compile_loss=cfg.compile.enable and "loss" in cfg.compile.components,
                  loss_chunk=cfg.training.loss_chunk_size, optimizer=o.name,
                  optimizer_impl=o.implementation, momentum=o.name != "SGD" or 0 < o.beta1 < 1, vocab_note=vocab_note)


def _ac_option(cfg: JobConfig) -> str:
    """'op' or k for selective AC; the budget for mode = 'memory_budget'."""
    ac = cfg.activation_checkpoint
    return str(ac.memory_budget) if ac.mode == "memory_budget" else str(ac.selective_ac_option)
