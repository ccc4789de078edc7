"""Everything a run needs, built in the order that fails fastest on bad input."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import titan_data
import titan_models
from titan_mesh import DistInfo, ParallelDims, init_distributed, set_determinism
from torch import nn

from titan_train.config import JobConfig
from titan_train.errors import ConfigError
from titan_train.plan import RunPlan


@dataclass
class Layout:
    """Where this process sits once the process group and the mesh exist."""

    info: DistInfo
    dims: ParallelDims
    dp_rank: int
    dp_size: int


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


def setup_distributed(cfg: JobConfig, plan: RunPlan) -> Layout:
    """Process group, device and mesh for a checked plan."""
    dims = plan.dims
    single_pg = plan.device_type == "cuda" and dims.world_size == 1  # FSDP mixed precision on one GPU
    info = init_distributed(device_type=plan.device_type, timeout_s=cfg.comm.init_timeout_seconds,
                            single_process_group=single_pg)
    if dims.world_size > 1 or single_pg:
        dims.build_mesh(plan.device_type, experts=plan.moe)
    dp_mesh = mesh_of(dims, "dp")
    dp_rank = dp_mesh.get_local_rank() if dp_mesh is not None else 0
    return Layout(info, dims, dp_rank, plan.batch.dp)


def seed_everything(cfg: JobConfig, layout: Layout) -> int:
    mesh = mesh_of(layout.dims, "world")
    return set_determinism(cfg.training.seed, mesh=mesh, deterministic=cfg.training.deterministic,
                           device=layout.info.device)


def tokenizer_path(cfg: JobConfig) -> str | None:
    return cfg.model.tokenizer_path or cfg.model.hf_assets_path


def load_tokenizer(cfg: JobConfig):
    """The run's tokenizer (model.tokenizer_path, else model.hf_assets_path, else the bundled one),
    after the model name and flavor are known to exist (they fail faster)."""
    spec = titan_models.get_model_spec(cfg.model.name)
    if cfg.model.flavor not in spec.flavors:
        spec.args_for(cfg.model.flavor)  # raises ModelConfigError with the known flavors
    return titan_data.load_tokenizer(tokenizer_path(cfg))


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
