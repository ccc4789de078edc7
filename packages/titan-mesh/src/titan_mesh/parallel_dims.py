"""Parallelism degrees -> a validated layout -> a named DeviceMesh.

Axis order, outermost first: pp, dp_replicate, dp_shard, cp, tp. TP is innermost so that its
frequent, latency-bound collectives stay inside a node; PP is outermost because it only sends
activations point-to-point and tolerates slow links.

Expert parallel (ep) is not one more axis of the world: it re-divides the same ranks. The
dp_shard x cp x tp ranks of each (pp, dp_replicate) coordinate are split into (efsdp, ep) with ep
innermost, so an ep group borrows the TP ranks first, then CP, then FSDP ranks; the experts are
sharded over ep and FSDP-sharded over efsdp (see ParallelDims.build_mesh(experts=True)).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIM_ORDER = ("pp", "dp_replicate", "dp_shard", "cp", "tp")

# Flattened views over several axes, each for one job:
#   dp          -> data loading: every rank of (replicate x shard) reads different data
#   dp_shard_cp -> FSDP: parameters are sharded over shard and context-parallel ranks
#   dp_cp       -> loss and metric averaging: all ranks that see different tokens
FLATTENED_VIEWS = {
    "dp": ("dp_replicate", "dp_shard"),
    "dp_shard_cp": ("dp_shard", "cp"),
    "dp_cp": ("dp_replicate", "dp_shard", "cp"),
}
# Built with experts=True: the expert meshes, and the view over every rank that routes different
# tokens (MoE load-balance counts are summed over it).
EXPERT_MESHES = ("ep", "efsdp", "routing")


class ParallelDimsError(ValueError):
    """A parallel layout that cannot be built (the message names degrees and world size)."""


@dataclass
class ParallelDims:
    """Degrees of each parallelism axis. Exactly one degree may be -1: it takes what is left.

    >>> ParallelDims(dp_shard=-1, tp=2, world_size=8).dp_shard
    4
    """

    dp_replicate: int = 1
    dp_shard: int = -1
    cp: int = 1
    tp: int = 1
    pp: int = 1
    world_size: int = 1
    ep: int = 1  # expert parallel: divides dp_shard * cp * tp (borrows those ranks, tp first)
    # How the caller spells each degree in its own messages (e.g. {"tp":
    # "parallelism.tensor_parallel_degree"}): errors name what the user wrote, not these fields.
    names: dict[str, str] | None = field(default=None, repr=False, compare=False)
    # Filled by build_mesh: the world mesh and every dim and flattened view by name. Torch asks
    # callers to keep flattened meshes themselves rather than slice them from the root mesh.
    _meshes: dict[str, DeviceMesh] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()

    def _degrees(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.init and f.name not in ("world_size", "names", "ep")}

    def _label(self, name: str) -> str:
        return (self.names or {}).get(name, name)

    def _describe(self) -> str:
        return ", ".join(f"{self._label(k)}={v}" for k, v in self._degrees().items())

    def _validate_ep(self) -> None:
        ep = self.ep
        if not isinstance(ep, int) or isinstance(ep, bool) or ep < 1:
            raise ParallelDimsError(f"degree {self._label('ep')}={ep!r} is invalid: use a positive integer")
        borrow = self.dp_shard * self.cp * self.tp
        if borrow % ep:
            allowed = ", ".join(str(d) for d in range(1, borrow + 1) if borrow % d == 0)
            raise ParallelDimsError(
                f"expert parallel {self._label('ep')}={ep} must divide {self._label('dp_shard')} x "
                f"{self._label('cp')} x {self._label('tp')} = {self.dp_shard} x {self.cp} x {self.tp} = {borrow} "
                f"(expert-parallel ranks are borrowed from those, tensor-parallel ones first); allowed: {allowed}")

    def _validate(self) -> None:
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ParallelDimsError(f"world_size must be a positive integer, got {self.world_size!r}")
        degrees = self._degrees()
        for name, value in degrees.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ParallelDimsError(f"degree {self._label(name)} must be an integer, got {value!r}")
            if value == 0 or value < -1:
                raise ParallelDimsError(
                    f"degree {self._label(name)}={value} is invalid: use a positive integer, or -1 for "
                    f"'all remaining ranks' ({self._describe()}; world size {self.world_size})"
                )
        inferred = [name for name, value in degrees.items() if value == -1]
        if len(inferred) > 1:
            raise ParallelDimsError(
                f"only one degree may be -1, got {', '.join(self._label(n) for n in inferred)} "
                f"({self._describe()}; world size {self.world_size})"
            )
        known = math.prod(v for v in degrees.values() if v != -1)
        divisors = ", ".join(str(d) for d in range(1, self.world_size + 1) if self.world_size % d == 0)
        if inferred:
            if self.world_size % known != 0:
                raise ParallelDimsError(
                    f"cannot infer {self._label(inferred[0])}: the other degrees multiply to {known}, which "
                    f"does not divide the world size {self.world_size} ({self._describe()}); their product "
                    f"must be one of {divisors}"
                )
            setattr(self, inferred[0], self.world_size // known)
        elif known != self.world_size:
            product = " x ".join(f"{self._label(k)}={v}" for k, v in degrees.items())
            raise ParallelDimsError(
                f"parallel degrees {product} = {known} do not match the world size "
                f"{self.world_size}; their product must be {self.world_size}, or set one degree to -1 to "
                "infer it"
            )
        self._validate_ep()

    # Which axes are on.
    @property
    def dp_replicate_enabled(self) -> bool:
        return self.dp_replicate > 1

    @property
    def dp_shard_enabled(self) -> bool:
        return self.dp_shard > 1

    @property
    def dp_enabled(self) -> bool:
        return self.dp_replicate > 1 or self.dp_shard > 1

    @property
    def fsdp_enabled(self) -> bool:
        return self.dp_shard > 1 or self.cp > 1

    @property
    def cp_enabled(self) -> bool:
        return self.cp > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    @property
    def ep_enabled(self) -> bool:
        return self.ep > 1

    @property
    def efsdp(self) -> int:
        """Ranks each expert shard is FSDP-sharded over: dp_shard x cp x tp / ep."""
        return self.dp_shard * self.cp * self.tp // self.ep

    @property
    def dp_degree(self) -> int:
        """Ranks that read different data (replicate x shard)."""
        return self.dp_replicate * self.dp_shard

    @property
    def non_data_parallel_size(self) -> int:
        return self.cp * self.tp * self.pp

    def enabled_dims(self) -> list[tuple[str, int]]:
        """(name, degree) of the axes with degree > 1, outermost first."""
        return [(n, getattr(self, n)) for n in MESH_DIM_ORDER if getattr(self, n) > 1]

    def build_mesh(self, device_type: str = "cpu", *, experts: bool = False) -> DeviceMesh:
        """A DeviceMesh with one named dim per enabled axis, plus the flattened views.

        Needs an initialized default process group of `world_size` ranks. With no axis enabled
        (one rank) the mesh has a single `dp_shard` dim of size 1, so FSDP-style mixed precision
        still applies on one device. experts=True (implied by ep > 1) also builds the meshes a
        mixture of experts needs: "ep", "efsdp" (one root mesh [pp, dp_replicate, efsdp, ep], so
        FSDP can shard expert-parallel weights over efsdp) and "routing" (all ranks of one
        pipeline stage: each routes different tokens).
        """
        dims = self.enabled_dims() or [("dp_shard", 1)]
        names = tuple(n for n, _ in dims)
        mesh = init_device_mesh(device_type, tuple(d for _, d in dims), mesh_dim_names=names)
        meshes = {"world": mesh, **{n: mesh[n] for n in names}}
        for view, parts in FLATTENED_VIEWS.items():
            present = tuple(p for p in parts if p in names)
            if present:
                meshes[view] = mesh[present]._flatten(view)
        if experts or self.ep > 1:
            meshes.update(self._expert_meshes(device_type, mesh, names))
        self._meshes = meshes
        return mesh

    def expert_rank_grid(self) -> list:
        """The sparse layout as nested lists [pp][dp_replicate][efsdp][ep] of global ranks: the
        dp_shard x cp x tp ranks of each (pp, dp_replicate) cell, in order, cut into ep-sized runs."""
        return self._expert_grid().tolist()

    def _expert_grid(self):
        import torch

        return torch.arange(self.world_size).view(self.pp, self.dp_replicate, self.efsdp, self.ep)

    def _expert_meshes(self, device_type: str, mesh: DeviceMesh, names: tuple[str, ...]) -> dict[str, DeviceMesh]:
        grid = self._expert_grid()
        # pp and dp_replicate only when enabled (no groups of one); efsdp and ep always
        keep = [i for i in range(4) if i >= 2 or grid.shape[i] > 1]
        sparse = DeviceMesh(device_type, grid.reshape([grid.shape[i] for i in keep]),
                            mesh_dim_names=tuple(("pp", "dp_replicate", "efsdp", "ep")[i] for i in keep))
        out = {"sparse": sparse, "ep": sparse["ep"], "efsdp": sparse["efsdp"]}
        if self.dp_replicate > 1:
            out["dp_replicate_efsdp"] = sparse["dp_replicate", "efsdp"]
        routing = tuple(n for n in ("dp_replicate", "dp_shard", "cp", "tp") if n in names)
        out["routing"] = mesh[routing]._flatten("routing") if routing else mesh
        return out

    def expert_fsdp_mesh(self) -> DeviceMesh | None:
        """The mesh FSDP shards expert weights over: `efsdp`, or 2-D (dp_replicate, efsdp) with
        HSDP; None unless build_mesh made the expert meshes."""
        return self._meshes.get("dp_replicate_efsdp") or self._meshes.get("efsdp")

    @property
    def has_mesh(self) -> bool:
        """Whether build_mesh ran (a single process may train without any mesh)."""
        return bool(self._meshes)

    def get_mesh(self, name: str) -> DeviceMesh | None:
        """A dim ("tp", ...), a flattened view ("dp", "dp_shard_cp", "dp_cp"), an expert mesh
        ("ep", "efsdp", "routing") or "world", from the last build_mesh; None when that axis is
        not enabled (the expert meshes: not built)."""
        if not self._meshes:
            raise RuntimeError("call build_mesh(device_type) before get_mesh()")
        known = ("world", *MESH_DIM_ORDER, *FLATTENED_VIEWS, *EXPERT_MESHES)
        if name not in known:
            raise KeyError(f"unknown mesh name {name!r}; known: {', '.join(known)}")
        return self._meshes.get(name)

    def process_groups(self) -> list:
        """Every process group behind the built meshes (dims and flattened views), once each."""
        groups, seen = [], set()
        for mesh in self._meshes.values():
            for dim in range(mesh.ndim):
                group = mesh.get_group(dim)
                if id(group) not in seen:
                    seen.add(id(group))
                    groups.append(group)
        return groups

    def destroy_groups(self) -> None:
        """Destroy the process groups build_mesh created (not the default group) and forget the
        meshes: a program that trains several times under one default group (a notebook, a test
        harness) must not collect groups, and their sockets and threads, run after run."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            self._meshes = {}
            return
        world = dist.distributed_c10d._get_default_group()
        for group in self.process_groups():
            if group is not world and group in dist.distributed_c10d._world.pg_map:
                dist.destroy_process_group(group)
        self._meshes = {}
        _forget_cached_meshes()


    def fsdp_mesh(self) -> DeviceMesh | None:
        """The mesh FSDP shards over: `dp_shard_cp`, or 2-D (`dp_replicate`, `dp_shard_cp`) for HSDP;
        None when there is nothing to shard or replicate over (see also `dp_replicate` alone: DDP)."""
        shard = self.get_mesh("dp_shard_cp")
        if self.get_mesh("dp_replicate") is None or shard is None:
            return shard
        if "hsdp" not in self._meshes:
            with warnings.catch_warnings():
                # torch asks callers to bookkeep flattened meshes; this cache is that bookkeeping.
                warnings.filterwarnings("ignore", message=".*flattened dim from root mesh.*")
                self._meshes["hsdp"] = self._meshes["world"]["dp_replicate", "dp_shard_cp"]
        return self._meshes["hsdp"]


def get_submesh(mesh: DeviceMesh | None, name: str) -> DeviceMesh | None:
    """`mesh[name]` for a named dim of `mesh`, or None when that dim is absent (or mesh is None).
    For flattened views use ParallelDims.get_mesh."""
    if mesh is None or name not in (mesh.mesh_dim_names or ()):
        return None
    return mesh[name]


def _forget_cached_meshes() -> None:
    """DTensor caches sharding decisions keyed by mesh *equality*: a later mesh of the same shape
    would be handed results holding the destroyed meshes' group names. Clear those caches (torch's
    debug helpers; each is looked up, as they are private and move between releases)."""
    try:
        from torch.distributed.tensor import _redistribute, debug
    except ImportError:  # pragma: no cover - DTensor absent
        return
    clear = getattr(debug, "_clear_sharding_prop_cache", None) or getattr(
        debug, "_clear_python_sharding_prop_cache", None)
    if clear is not None:
        clear()
    plans = getattr(_redistribute, "_gen_transform_infos", None)
    if hasattr(plans, "cache_clear"):
        plans.cache_clear()
