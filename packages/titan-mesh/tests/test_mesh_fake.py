"""Mesh shapes and names at scale, built on a fake process group (no communication)."""

import pytest
from titan_mesh import ParallelDims, get_submesh
from titan_mesh.testing import fake_world


@pytest.mark.parametrize(
    "world, degrees, dims, views",
    [
        (8, dict(dp_shard=-1), {"dp_shard": 8}, {"dp": 8, "dp_shard_cp": 8, "dp_cp": 8}),
        (8, dict(dp_replicate=2, dp_shard=2, tp=2),
         {"dp_replicate": 2, "dp_shard": 2, "tp": 2}, {"dp": 4, "dp_shard_cp": 2, "dp_cp": 4}),
        (64, dict(dp_shard=-1, cp=2, tp=8), {"dp_shard": 4, "cp": 2, "tp": 8},
         {"dp": 4, "dp_shard_cp": 8, "dp_cp": 8}),
        (64, dict(pp=2, dp_replicate=2, dp_shard=2, cp=2, tp=4),
         {"pp": 2, "dp_replicate": 2, "dp_shard": 2, "cp": 2, "tp": 4},
         {"dp": 4, "dp_shard_cp": 4, "dp_cp": 8}),
        (512, dict(dp_shard=8, tp=8, pp=8), {"pp": 8, "dp_shard": 8, "tp": 8},
         {"dp": 8, "dp_shard_cp": 8, "dp_cp": 8}),
        (512, dict(dp_shard=-1, tp=8, cp=1), {"dp_shard": 64, "tp": 8},
         {"dp": 64, "dp_shard_cp": 64, "dp_cp": 64}),
    ],
)
def test_mesh_shapes_and_views(world, degrees, dims, views):
    with fake_world(world, rank=world - 1):
        pd = ParallelDims(world_size=world, **degrees)
        mesh = pd.build_mesh("cpu")
        assert mesh.mesh_dim_names == tuple(dims)
        assert tuple(mesh.shape) == tuple(dims.values())
        for name, size in {**dims, **views}.items():
            assert pd.get_mesh(name).size() == size, name
        for name in dims:
            assert get_submesh(mesh, name).size() == dims[name]
        for absent in {"pp", "dp_replicate", "cp", "tp"} - set(dims):
            assert get_submesh(mesh, absent) is None and pd.get_mesh(absent) is None


def test_tp_is_innermost_and_contiguous():
    with fake_world(64, rank=13):
        pd = ParallelDims(dp_shard=-1, tp=8, world_size=64)
        pd.build_mesh("cpu")
        # rank 13 = dp 1, tp 5: its TP group is ranks 8..15, its FSDP group ranks 5, 13, ..., 61
        assert pd.get_mesh("tp").mesh.tolist() == list(range(8, 16))
        assert pd.get_mesh("dp_shard_cp").mesh.tolist() == list(range(5, 64, 8))


def test_single_rank_mesh_has_dp_shard_of_one():
    with fake_world(1):
        pd = ParallelDims(world_size=1)
        mesh = pd.build_mesh("cpu")
        assert mesh.mesh_dim_names == ("dp_shard",) and mesh.size() == 1
        assert pd.get_mesh("dp_shard_cp").size() == 1 and pd.get_mesh("world") is mesh
        assert get_submesh(None, "dp") is None


def test_get_mesh_errors():
    pd = ParallelDims(world_size=1)
    with pytest.raises(RuntimeError, match="call build_mesh"):
        pd.get_mesh("dp")
    with fake_world(1):
        pd.build_mesh("cpu")
        with pytest.raises(KeyError, match="unknown mesh name 'fsdp'"):
            pd.get_mesh("fsdp")
