"""Everything a run needs, built in the order that fails fastest on bad input."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import titan_data
import titan_models
import torch
from titan_mesh import DistInfo, ParallelDims, init_distributed, set_determinism
from torch import nn

from titan_train.config import JobConfig
from titan_train.errors import ConfigError


@dataclass
class Layout:
    info: DistInfo
    dims: ParallelDims
    dp_rank: int
    dp_size: int
    accum_steps: int   # micro-batches per optimizer step on each rank
    global_batch: int


def mesh_of(dims: ParallelDims, name: str):
    """A named mesh, or None when the axis is off or no mesh was built (one CPU process)."""
    return dims.get_mesh(name) if dims.has_mesh else None


def check_dump_folder(folder: str, key: str = "job.dump_folder") -> Path:
    """Create `folder` and prove it writable now, not after the first steps' work."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{key} = {folder!r} is not writable: {e.strerror}") from None
    return path


@dataclass
class LayoutPlan:
    dims: ParallelDims
    device_type: str
    dp_size: int
    accum_steps: int
    global_batch: int


# How the config spells each degree: library errors name these keys, not titan-mesh's fields.
DEGREE_KEYS = {"dp_replicate": "parallelism.data_parallel_replicate_degree",
               "dp_shard": "parallelism.data_parallel_shard_degree", "cp": "parallelism.context_parallel_degree",
               "tp": "parallelism.tensor_parallel_degree", "pp": "parallelism.pipeline_parallel_degree"}


def dims_from_config(cfg: JobConfig, world_size: int) -> ParallelDims:
    """The degrees of `cfg` on `world_size` processes; ConfigError naming the config keys."""
    from titan_mesh import ParallelDimsError

    p = cfg.parallelism
    try:
        return ParallelDims(dp_replicate=p.data_parallel_replicate_degree, dp_shard=p.data_parallel_shard_degree,
                            cp=p.context_parallel_degree, tp=p.tensor_parallel_degree, pp=p.pipeline_parallel_degree,
                            world_size=world_size, names=DEGREE_KEYS)
    except ParallelDimsError as e:
        raise ConfigError(f"{e} (world size: {world_size} processes)") from None


def plan_layout(cfg: JobConfig) -> LayoutPlan:
    """Degrees and batch arithmetic from the config and WORLD_SIZE; no process group yet."""
    p, t = cfg.parallelism, cfg.training
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    dims = dims_from_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    if dims.cp > 1 and p.context_parallel_method == "ring":
        _check_ring(cfg, dims, device_type)
    dp = dims.dp_replicate * dims.dp_shard
    global_batch = t.global_batch_size if t.global_batch_size > 0 else t.local_batch_size * dp
    if global_batch % (t.local_batch_size * dp):
        raise ConfigError(f"training.global_batch_size = {global_batch} must be a multiple of "
                          f"local_batch_size x data-parallel degree = {t.local_batch_size} x {dp}")
    if dims.pp > 1 and t.local_batch_size % p.pipeline_parallel_microbatch_size:
        raise ConfigError(f"training.local_batch_size = {t.local_batch_size} must be divisible by "
                          f"parallelism.pipeline_parallel_microbatch_size = {p.pipeline_parallel_microbatch_size}")
    return LayoutPlan(dims, device_type, dp, global_batch // (t.local_batch_size * dp), global_batch)


def _check_ring(cfg: JobConfig, dims: ParallelDims, device_type: str) -> None:
    """Ring attention (torch's context_parallel) replaces scaled_dot_product_attention and nothing
    else: combinations it would silently compute otherwise are refused."""
    key = f"parallelism.context_parallel_degree = {dims.cp} with context_parallel_method = 'ring'"
    if cfg.model.attn_backend != "sdpa":
        raise ConfigError(f"{key} and model.attn_backend = {cfg.model.attn_backend!r}: torch's ring attention "
                          "patches SDPA only, so this attention would attend within each rank's shard of the "
                          "sequence. Use attn_backend = 'sdpa', or context_parallel_method = 'ulysses' (any kernel)")
    if dims.pp > 1:
        raise ConfigError(f"{key} and parallelism.pipeline_parallel_degree = {dims.pp}: not proven on GPUs yet, so "
                          "refused; context_parallel_method = 'ulysses' combines with pipeline parallel (tested)")
    if device_type != "cuda":
        raise ConfigError(f"{key} needs GPUs (torch's ring attention does not run on CPU); 'ulysses' runs anywhere")


def setup_distributed(cfg: JobConfig, plan: LayoutPlan) -> Layout:
    """Process group, device and mesh for a checked plan."""
    dims = plan.dims
    single_pg = plan.device_type == "cuda" and dims.world_size == 1  # FSDP mixed precision on one GPU
    info = init_distributed(device_type=plan.device_type, timeout_s=cfg.comm.init_timeout_seconds,
                            single_process_group=single_pg)
    if dims.world_size > 1 or single_pg:
        dims.build_mesh(plan.device_type)
    dp_mesh = mesh_of(dims, "dp")
    dp_rank = dp_mesh.get_local_rank() if dp_mesh is not None else 0
    return Layout(info, dims, dp_rank, plan.dp_size, plan.accum_steps, plan.global_batch)


def seed_everything(cfg: JobConfig, layout: Layout) -> int:
    mesh = mesh_of(layout.dims, "world")
    return set_determinism(cfg.training.seed, mesh=mesh, deterministic=cfg.training.deterministic,
                           device=layout.info.device)


def tokenizer_path(cfg: JobConfig) -> str | None:
    return cfg.model.tokenizer_path or cfg.model.hf_assets_path


def build_model_args(cfg: JobConfig, spec, vocab_size: int, dims: ParallelDims, eos_id: int | None = None):
    overrides: dict = {"max_seq_len": cfg.training.seq_len, "attn_backend": cfg.model.attn_backend,
                       "attn_mask": cfg.model.attn_mask, "sdpa_kernels": tuple(cfg.model.sdpa_kernels),
                       # context parallel keeps the path it was checked on: k/v repeated to all heads
                       "repeat_kv": dims.cp > 1}
    want_vocab = cfg.model.vocab_size if cfg.model.vocab_size > 0 else vocab_size
    if want_vocab < vocab_size:
        raise ConfigError(f"model.vocab_size = {want_vocab} is smaller than the tokenizer's {vocab_size} ids")
    overrides["vocab_size"] = want_vocab
    if cfg.model.n_layers > 0:
        overrides["n_layers"] = cfg.model.n_layers
    if cfg.model.tie_embeddings is not None:
        overrides["tie_embeddings"] = cfg.model.tie_embeddings
    if cfg.model.attn_mask == "block_causal":
        overrides["eos_id"] = eos_id
        if dims.pp > 1 or (dims.cp > 1 and cfg.parallelism.context_parallel_method == "ulysses"):
            raise ConfigError("model.attn_mask = 'block_causal' does not combine with pipeline parallel or "
                              "Ulysses context parallel yet; use attn_mask = 'causal' there")
    args = spec.args_for(cfg.model.flavor, **overrides)
    spec.validate(args, tp=dims.tp, cp=dims.cp, pp=dims.pp, names={**DEGREE_KEYS, "max_seq_len": "training.seq_len"})
    return args


def build_tokenizer_and_spec(cfg: JobConfig):
    spec = titan_models.get_model_spec(cfg.model.name)
    if cfg.model.flavor not in spec.flavors:
        spec.args_for(cfg.model.flavor)  # raises ModelConfigError with the known flavors
    tokenizer = titan_data.load_tokenizer(tokenizer_path(cfg))
    return spec, tokenizer


def build_loader(cfg: JobConfig, tokenizer, layout: Layout, *, validation: bool = False):
    src = cfg.validation if validation else cfg.training
    return titan_data.build_dataloader(
        src.dataset, tokenizer=tokenizer, seq_len=src.seq_len, local_batch_size=src.local_batch_size,
        dp_rank=layout.dp_rank, dp_world_size=layout.dp_size, dataset_path=src.dataset_path,
        split="validation" if validation else "train", text_field=cfg.training.dataset_text_field,
        num_workers=0 if validation else cfg.training.num_workers, dataset_config=src.dataset_config,
        mode=None if validation or cfg.training.dataset_mode == "default" else cfg.training.dataset_mode,
        seed=cfg.training.seed or 0, infinite=not validation)


def count_params(parts: list[nn.Module]) -> int:
    return sum(p.numel() for m in parts for p in m.parameters())
