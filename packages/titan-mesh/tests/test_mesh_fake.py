"""Mesh shapes and names at scale, built on a fake process group (no communication)."""

import pytest
from titan_mesh import ParallelDims, ParallelDimsError, get_submesh
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


@pytest.mark.parametrize("world, degrees, ep, my_ep, my_efsdp", [
    # rank 13 of 16, dp_shard 4 x tp 4: ep 2 borrows half a TP group
    (16, dict(dp_shard=4, tp=4), 2, [12, 13], [1, 3, 5, 7, 9, 11, 13, 15]),
    # ep 4 = the whole TP group; efsdp = the FSDP group
    (16, dict(dp_shard=4, tp=4), 4, [12, 13, 14, 15], [1, 5, 9, 13]),
    # ep 8 borrows all of TP and half of dp_shard
    (16, dict(dp_shard=4, tp=4), 8, list(range(8, 16)), [5, 13]),
    # no TP: ep borrows FSDP ranks
    (16, dict(dp_shard=16), 4, [12, 13, 14, 15], [1, 5, 9, 13]),
    # cp x tp borrowed before dp_shard; pp and dp_replicate stay outside
    (16, dict(pp=2, dp_replicate=2, dp_shard=2, tp=2), 2, [12, 13], [13, 15]),
])
def test_expert_meshes_borrow_tp_first(world, degrees, ep, my_ep, my_efsdp):
    with fake_world(world, rank=13):
        pd = ParallelDims(world_size=world, ep=ep, **degrees)
        pd.build_mesh("cpu")
        assert pd.get_mesh("ep").mesh.tolist() == my_ep
        assert pd.get_mesh("efsdp").mesh.tolist() == my_efsdp
        assert pd.efsdp * ep == pd.dp_shard * pd.cp * pd.tp
        grid = pd.expert_rank_grid()
        assert my_ep in [row for plane in grid for stage in plane for row in stage]
        expected_routing = world // pd.pp
        assert pd.get_mesh("routing").size() == expected_routing
        fsdp = pd.expert_fsdp_mesh()
        assert fsdp.mesh_dim_names == (("dp_replicate", "efsdp") if pd.dp_replicate > 1 else ("efsdp",))


def test_expert_meshes_only_when_asked():
    with fake_world(4, rank=0):
        pd = ParallelDims(world_size=4, tp=2)
        pd.build_mesh("cpu")
        assert pd.get_mesh("ep") is None and pd.expert_fsdp_mesh() is None
        pd.build_mesh("cpu", experts=True)  # ep = 1: experts FSDP-sharded over dp_shard x tp
        assert pd.get_mesh("ep").size() == 1 and pd.get_mesh("efsdp").mesh.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("degrees, needle", [
    (dict(dp_shard=2, tp=2, ep=3), r"expert parallel parallelism.expert_parallel_degree=3 must divide "
                                   r"parallelism.data_parallel_shard_degree x .* = 2 x 1 x 2 = 4 .*allowed: 1, 2, 4"),
    (dict(dp_replicate=2, dp_shard=2, ep=4), r"= 2 x 1 x 1 = 2"),
    (dict(dp_shard=4, ep=0), r"parallelism.expert_parallel_degree=0 is invalid"),
])
def test_bad_expert_degrees_name_the_keys(degrees, needle):
    names = {"ep": "parallelism.expert_parallel_degree", "dp_shard": "parallelism.data_parallel_shard_degree"}
    with pytest.raises(ParallelDimsError, match=needle):
        ParallelDims(world_size=4, names=names, **degrees)
