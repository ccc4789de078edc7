"""Per-rank parameter sizes from the real appliers, on the meta device, under a fake world.

A short copy of the model (same widths, vocabulary and plan) is built on the meta device and
parallelized by the trainer's own `parallelize_part` (TP plan, then FSDP / HSDP / DDP) inside a
fake process group of the job's world size, so shard shapes, FSDP's dim-0 padding and the TP
plan are exactly the trainer's. Blocks of one kind are identical, so one of each is enough: the
estimate multiplies. The copy has one block, or, for a model with dense and mixture-of-experts
blocks (DeepSeek V3's dense first layers), the fewest blocks that hold both kinds. Nothing is
allocated; 405B on 512 ranks takes about a second.

A process that already has a default process group (the trainer calling `precheck`) cannot
open a fake one, so it runs the same measurement in a subprocess.
"""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from titan_train.config import JobConfig
from titan_train.errors import ConfigError
from titan_train.memory.layout import Layout


@dataclass(frozen=True)
class GroupSize:
    """Elements of one module group on the fullest rank."""

    stored: int      # as kept between steps (after TP and FSDP sharding, FSDP padding included)
    gathered: int    # after TP only: what an FSDP all-gather rebuilds for compute
    float8: int      # of `gathered`, elements in linears converted to float8


@dataclass(frozen=True)
class ParamSizes:
    embedding: GroupSize
    block: GroupSize     # one transformer block (a mixture-of-experts one where the model has both kinds)
    norm: GroupSize      # everything else outside the blocks (final norm; multi-token prediction modules)
    output: GroupSize
    tied: bool           # output.weight is the embedding table (same stage only)
    dense_block: GroupSize | None = None  # one dense block, where the model also has MoE blocks
    n_dense: int = 0                      # how many of the model's blocks are dense (the first ones)


def _clean(fqn: str) -> str:
    return fqn.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")


def _group(fqn: str, spec, dense: set[str] = frozenset()) -> str:
    """embedding / block / dense_block / output / norm (the other head modules), by the spec's
    module roles; `dense`: names of the dense blocks ("layers.0") in a model with both kinds."""
    parts = _clean(fqn).split(".")
    top = parts[0]
    if top == spec.embedding:
        return "embedding"
    if top == spec.blocks:
        return "dense_block" if ".".join(parts[:2]) in dense else "block"
    return "output" if top == spec.output else "norm"


def _float8_names(model: nn.Module, layout: Layout) -> set[str]:
    """Linears apply_float8 would convert (same skip rules: name substrings, small GEMMs)."""
    if not layout.float8:
        return set()
    from titan_parallel.float8 import is_small_gemm

    f8 = layout.run.float8
    return {f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(s in name for s in f8.skip)
            and not (f8.skip_small and is_small_gemm(m, f8.recipe))}


def _tp_factor(p: torch.Tensor) -> int:
    """How many ranks share this parameter outside FSDP (its shards along the mesh dims named tp,
    and ep for expert weights): what an FSDP all-gather leaves split."""
    mesh = getattr(p, "device_mesh", None)
    names = mesh.mesh_dim_names or () if mesh is not None else ()
    factor = 1
    for dim in ("tp", "ep"):
        if dim in names:
            placement = p.placements[names.index(dim)]
            if placement.is_shard() or "Shard" in type(placement).__name__:
                factor *= mesh[dim].size()
    return factor


GROUPS = ("embedding", "block", "dense_block", "norm", "output")


def _sizes(model: nn.Module, float8_names: set[str], spec, dense: set[str], n_moe: int) -> dict[str, GroupSize]:
    """Elements per group; blocks divided per block (`n_moe` MoE blocks, the `dense` ones)."""
    stored = dict.fromkeys(GROUPS, 0)
    gathered = dict.fromkeys(GROUPS, 0)
    fp8 = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():
        g = _group(name, spec, dense)
        stored[g] += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        full = p.numel() // _tp_factor(p)
        gathered[g] += full
        if _clean(name) in float8_names:
            fp8[g] += full
    per = {"block": max(1, n_moe), "dense_block": max(1, len(dense))}
    return {g: GroupSize(*(-(-x[g] // per.get(g, 1)) for x in (stored, gathered, fp8))) for g in GROUPS}


def _short_copy(spec, args):
    """The fewest blocks that hold one of each kind the model has (1 for a uniform model)."""
    from titan_models import RunOptions

    full = spec.shape(args)
    mixed = 0 < full.moe_layers < full.n_layers
    for n in range(1, full.n_layers + 1):
        # Untied, so embedding and output are counted apart (the estimate shares them when tied).
        small = spec.with_options(args, RunOptions(n_layers=n, tie_embeddings=False))
        moe = spec.shape(small).moe_layers
        if not mixed or 0 < moe < n:
            return small, full.n_layers - full.moe_layers if mixed else 0
    return small, 0


def measure(cfg: JobConfig, layout: Layout) -> ParamSizes:
    """Build, parallelize and count (needs no process group in this process)."""
    from titan_mesh import ParallelDims
    from titan_mesh.testing import fake_world

    from titan_train.trainer.build_model import parallelize_part

    run = layout.run
    spec = run.spec
    small, n_dense = _short_copy(spec, run.args)
    # Only TP and data parallelism change sizes; AC, compile and async TP are left out here.
    quiet = dataclasses.replace(run, parallel=dataclasses.replace(run.parallel, ac=None, compile=None, async_tp=False))
    d = run.dims
    with fake_world(layout.world_size):
        dims = ParallelDims(dp_replicate=d.dp_replicate, dp_shard=d.dp_shard, cp=d.cp, tp=d.tp, pp=d.pp, ep=d.ep,
                            world_size=layout.world_size)
        dims.build_mesh("cpu", experts=run.moe)
        with torch.device("meta"):
            model = spec.build(small)
        blocks = getattr(model, spec.blocks)
        dense = {f"{spec.blocks}.{name}" for name, b in blocks.named_children() if n_dense and not hasattr(b, "moe")}
        f8 = _float8_names(model, layout)
        parallelize_part(model, quiet, dims)
        sizes = _sizes(model, f8, spec, dense, len(blocks) - len(dense))
    return ParamSizes(sizes["embedding"], sizes["block"], sizes["norm"], sizes["output"],
                      tied=spec.shape(run.args).tie_embeddings,
                      dense_block=sizes["dense_block"] if n_dense else None, n_dense=n_dense)


def param_sizes(cfg: JobConfig, layout: Layout) -> ParamSizes:
    """measure() here, or in a fresh interpreter when this process already has a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return measure(cfg, layout)
    proc = subprocess.run([sys.executable, "-m", "titan_train.memory.sizes"], input=pickle.dumps((cfg, layout)),
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise ConfigError("memory estimate: measuring parameter shards failed: "
                          + proc.stderr.decode(errors="replace")[-2000:])
    return pickle.loads(proc.stdout)


if __name__ == "__main__":  # the subprocess side of param_sizes
    # Import this module under its own name so the result unpickles as titan_train's ParamSizes.
    from titan_train.memory import sizes as _module

    _cfg, _layout = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(pickle.dumps(_module.measure(_cfg, _layout)))
