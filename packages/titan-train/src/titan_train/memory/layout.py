"""What the estimator needs from a JobConfig and a world size, as plain data.

Degrees, batch arithmetic and model arguments come from the trainer's own functions
(plan_layout's rules, build_model_args), so the estimate describes the run the trainer would
start; pipeline stages come from titan-parallel's stage planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from titan_train.config import JobConfig, uses_float8
from titan_train.errors import ConfigError
from titan_train.trainer.build_model import float8_skip, mixed_precision_mode, uses_fsdp


@dataclass(frozen=True)
class RankStages:
    """One pipeline rank: its stages' block counts, whether it holds the embedding / the head,
    and how many (stage, microbatch) forwards it keeps alive at most before their backward."""

    pp_rank: int
    blocks: tuple[int, ...]
    has_embedding: bool
    has_head: bool
    in_flight: int  # stage-microbatches whose activations coexist (1 without PP)


@dataclass(frozen=True)
class Layout:
    args: Any                  # the model's args (vocab and seq_len applied), e.g. LlamaArgs
    model_name: str
    world_size: int
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int
    pp: int
    local_batch: int
    seq_len: int
    accum_steps: int
    microbatch: int            # sequences per forward (pipeline microbatch, else local_batch)
    schedule: str | None
    ranks: tuple[RankStages, ...]
    ac_mode: str
    ac_option: str
    compile_model: bool
    compile_loss: bool
    float8: bool
    float8_all_gather: bool
    float8_skip: tuple[str, ...]
    float8_recipe: str
    fsdp: bool
    ddp: bool
    reshard_after_forward: bool
    loss_parallel: bool
    async_tp: bool
    cp_rotate: str
    cpu_offload: bool
    optimizer: str
    optimizer_impl: str
    momentum: bool
    compute_bytes: int         # activation / gathered-parameter dtype
    reduce_bytes: int
    vocab_note: str
    autocast: bool = False     # bf16 through torch.autocast (DDP): a bf16 copy of the weights is cached

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


def _pipeline_ranks(cfg: JobConfig, pp: int, n_layers: int, order: list[str], n_mb: int) -> tuple[str, tuple[RankStages, ...]]:
    from titan_parallel.pipeline import SCHEDULES, plan_stages, resolve_schedule, stage_ids_for_rank

    from titan_train.trainer.pipeline import _from_split_points, layers_per_stage_split

    p = cfg.parallelism
    name, spec = resolve_schedule(p.pipeline_parallel_schedule)
    split = p.module_fqns_per_model_part
    if split is None and p.pipeline_parallel_split_points:
        split = _from_split_points(order, p.pipeline_parallel_split_points)
    if p.pipeline_parallel_layers_per_stage is not None:  # as the trainer's split() (conflicts raise there)
        split = layers_per_stage_split(order, p.pipeline_parallel_layers_per_stage, pp)
    if split is not None:
        per_rank = len(split) // pp
    else:
        per_rank = 1 if SCHEDULES[name].min_stages_per_rank == 1 else 2
    plan = plan_stages(order, pp * per_rank, split_points=split)
    ranks = []
    for r in range(pp):
        ids = stage_ids_for_rank(r, pp, per_rank, spec.placement)
        mods = [plan[i] for i in ids]
        ranks.append(RankStages(r, tuple(sum(m.startswith("layers.") for m in s) for s in mods),
                                any("tok_embeddings" in s for s in mods), any("output" in s for s in mods),
                                _in_flight(name, pp, r, per_rank, n_mb)))
    return name, tuple(ranks)


def plan(cfg: JobConfig, world_size: int) -> Layout:
    """Layout of `cfg` on `world_size` GPUs; ConfigError for any layout the trainer would refuse."""
    import titan_models
    from titan_parallel import ParallelConfigError

    from titan_train.trainer.setup import build_model_args, dims_from_config

    p, t = cfg.parallelism, cfg.training
    dims = dims_from_config(cfg, world_size)
    try:
        spec = titan_models.get_model_spec(cfg.model.name)
        vocab, vocab_note = _vocab(cfg, spec.args_for(cfg.model.flavor).vocab_size)
        args = build_model_args(cfg, spec, vocab, dims)
    except titan_models.ModelConfigError as e:
        raise ConfigError(str(e)) from None
    dp = dims.dp_replicate * dims.dp_shard
    global_batch = t.global_batch_size if t.global_batch_size > 0 else t.local_batch_size * dp
    if global_batch % (t.local_batch_size * dp):
        raise ConfigError(f"training.global_batch_size = {global_batch} must be a multiple of "
                          f"local_batch_size x data-parallel degree = {t.local_batch_size} x {dp}")
    order = ["tok_embeddings", *(f"layers.{i}" for i in range(args.n_layers)), "norm", "output"]
    schedule = None
    if dims.pp > 1:
        mb = p.pipeline_parallel_microbatch_size
        if t.local_batch_size % mb:
            raise ConfigError(f"training.local_batch_size = {t.local_batch_size} must be divisible by "
                              f"parallelism.pipeline_parallel_microbatch_size = {mb}")
        try:
            schedule, ranks = _pipeline_ranks(cfg, dims.pp, args.n_layers, order, t.local_batch_size // mb)
        except ParallelConfigError as e:
            raise ConfigError(f"pipeline: {e}") from None
    else:
        mb = t.local_batch_size
        ranks = (RankStages(0, (args.n_layers,), True, True, 1),)
    f8 = cfg.float8
    float8 = uses_float8(cfg)
    bf16 = t.mixed_precision_param == "bfloat16"
    gpu = torch.device("cuda")  # estimates are for GPU runs: the trainer's own rules on a GPU
    fsdp = uses_fsdp(dims, gpu, cfg)
    autocast = mixed_precision_mode(dims, gpu, cfg) == "autocast"
    return Layout(
        args=args, model_name=cfg.model.name, world_size=world_size, dp_replicate=dims.dp_replicate,
        dp_shard=dims.dp_shard, cp=dims.cp, tp=dims.tp, pp=dims.pp, local_batch=t.local_batch_size,
        seq_len=t.seq_len, accum_steps=global_batch // (t.local_batch_size * dp), microbatch=mb,
        schedule=schedule, ranks=ranks, ac_mode=cfg.activation_checkpoint.mode,
        ac_option=str(cfg.activation_checkpoint.selective_ac_option),
        compile_model=cfg.compile.enable and "model" in cfg.compile.components,
        compile_loss=cfg.compile.enable and "loss" in cfg.compile.components,
        float8=float8, float8_all_gather=float8 and f8.enable_fsdp_float8_all_gather,
        float8_skip=float8_skip(cfg, spec), float8_recipe=f8.recipe_name or "tensorwise",
        fsdp=fsdp, ddp=not fsdp and dims.dp_replicate > 1,
        reshard_after_forward={"default": dims.pp == 1, "always": True, "never": False}[p.fsdp_reshard_after_forward],
        loss_parallel=dims.tp > 1 and not p.disable_loss_parallel and dims.pp == 1,
        async_tp=p.enable_async_tensor_parallel and dims.tp > 1, cp_rotate=p.context_parallel_rotate_method,
        cpu_offload=t.enable_cpu_offload, optimizer=cfg.optimizer.name, optimizer_impl=cfg.optimizer.implementation,
        momentum=cfg.optimizer.name != "SGD" or 0 < cfg.optimizer.beta1 < 1,
        compute_bytes=2 if (bf16 and (fsdp or autocast)) else 4,
        reduce_bytes=4 if t.mixed_precision_reduce == "float32" else 2,
        vocab_note=vocab_note, autocast=autocast,
    )

