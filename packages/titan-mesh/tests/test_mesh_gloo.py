"""A real 4-process gloo run: a 2 x 2 (dp_replicate x dp_shard) and a (dp_shard x tp) mesh."""

import pytest
import torch
import torch.distributed as dist
from titan_mesh import (
    ParallelDims,
    dist_max,
    dist_mean,
    dist_reduce_tensor,
    dist_sum,
    get_submesh,
    set_collective_timeout,
    set_determinism,
)
from titan_mesh.testing import DistributedPool, RemoteError


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(world_size=4) as p:
        yield p


def _hsdp_views():
    rank = dist.get_rank()
    pd = ParallelDims(dp_replicate=2, dp_shard=2, world_size=4)
    mesh = pd.build_mesh("cpu")
    out = {}
    for view in ("dp_replicate", "dp_shard", "dp", "dp_shard_cp", "dp_cp"):
        sub = pd.get_mesh(view)
        t = torch.tensor([float(rank)])
        dist.all_reduce(t, group=sub.get_group())
        out[view] = (sub.mesh.tolist(), t.item())
    out["mean"] = dist_mean(torch.tensor(float(rank)), mesh)
    out["max"] = dist_max(float(rank), mesh["dp_shard"])
    out["sum"] = dist_sum(1.0, pd.get_mesh("dp"))
    lazy = dist_reduce_tensor(torch.tensor(float(rank)), "max", mesh)  # a tensor, read later
    out["lazy"] = (type(lazy).__name__, lazy.dim(), lazy.item())
    return out


def test_flattened_views_reduce_over_the_right_ranks(pool):
    res = pool.run(_hsdp_views)
    # rank r = 2 * replicate + shard
    assert res[0]["dp_shard"] == ([0, 1], 1.0) and res[3]["dp_shard"] == ([2, 3], 5.0)
    assert res[1]["dp_replicate"] == ([1, 3], 4.0)
    for r in range(4):
        assert res[r]["dp"] == ([0, 1, 2, 3], 6.0)
        assert res[r]["dp_shard_cp"] == res[r]["dp_shard"]  # no cp: FSDP group == shard group
        assert res[r]["dp_cp"] == res[r]["dp"]
        assert res[r]["mean"] == 1.5 and res[r]["sum"] == 4.0
        assert res[r]["lazy"] == ("Tensor", 0, 3.0)
    assert [res[r]["max"] for r in range(4)] == [1.0, 1.0, 3.0, 3.0]


def _tp_mesh_and_seed():
    mesh = ParallelDims(dp_shard=2, tp=2, world_size=4).build_mesh("cpu")
    assert get_submesh(mesh, "dp_replicate") is None and get_submesh(mesh, "cp") is None
    same = set_determinism(1234, mesh=mesh)
    a = torch.rand(3).tolist()
    set_determinism(1234, mesh=mesh, distinct_along=("tp",))
    b = torch.rand(3).tolist()
    drawn = set_determinism(None, mesh=mesh)  # drawn on rank 0, broadcast
    return mesh["tp"].mesh.tolist(), same, a, b, drawn


def test_tp_innermost_and_seeding(pool):
    res = pool.run(_tp_mesh_and_seed)
    assert [r[0] for r in res] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert all(r[1] == 1234 for r in res)
    assert all(r[2] == res[0][2] for r in res)  # same seed everywhere by default
    assert res[0][3] == res[2][3] and res[0][3] != res[1][3]  # distinct along tp only
    assert len({r[4] for r in res}) == 1


def _fails_on_rank_one():
    if dist.get_rank() == 1:
        raise ValueError("boom on one rank")
    return dist.get_rank()


def test_pool_reports_a_rank_failure_and_recovers(pool):
    with pytest.raises(RemoteError, match="(?s)rank 1: .*boom on one rank"):
        pool.run(_fails_on_rank_one)
    assert pool.run(dist.get_world_size) == [4, 4, 4, 4]


def _lower_timeouts():
    pd = ParallelDims(dp_replicate=2, dp_shard=2, world_size=4)
    pd.build_mesh("cpu")
    groups = pd.process_groups()
    set_collective_timeout(42, groups)
    timeouts = {g._get_backend(torch.device("cpu")).options._timeout.total_seconds() for g in groups}
    default = dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    t = torch.ones(1)
    dist.all_reduce(t, group=pd.get_mesh("dp").get_group())  # still works afterwards
    set_collective_timeout(600, groups)  # the pool's later tests keep the long timeout
    return len(groups), timeouts, default, t.item()


def test_collective_timeout_reaches_every_mesh_group(pool):
    for n_groups, timeouts, default, total in pool.run(_lower_timeouts):
        assert n_groups >= 3  # dp_replicate, dp_shard and the flattened dp views (shared groups once)
        assert timeouts == {42.0} and default == 42.0 and total == 4.0


def test_a_port_taken_before_rank_0_binds_it_means_another_port(monkeypatch):
    """The race two test runs on one machine lose now and then: the port picked as free is bound
    by someone else first. The pool tries another one instead of waiting out its timeout."""
    import socket

    from titan_mesh import testing

    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real = testing._free_port
    picked = []

    def pick():
        picked.append(next(ports, None) or real())
        return picked[-1]

    monkeypatch.setattr(testing, "_free_port", pick)
    try:
        with DistributedPool(world_size=2, timeout_s=60) as p:
            assert p.run(dist.get_world_size) == [2, 2]
    finally:
        squatter.close()
    assert picked[0] == taken and len(picked) == 2


def test_a_rank_that_cannot_join_fails_at_once():
    """Any other failure to form the group is reported with the rank's traceback, not a timeout."""
    import time

    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="(?s)could not form a process group.*rank 0"):
        DistributedPool(world_size=1, backend="bogus", timeout_s=120).start()
    assert time.monotonic() - t0 < 60


def _dies_on_rank_one():
    import os

    if dist.get_rank() == 1:
        os._exit(3)
    dist.barrier()  # rank 0 would wait here for the collective's timeout


def test_a_rank_that_dies_fails_the_call_at_once(pool):
    import time

    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=r"rank 1 exited \(code 3\)"):
        pool.run(_dies_on_rank_one)
    assert time.monotonic() - t0 < 60
    assert pool.run(dist.get_world_size) == [4, 4, 4, 4]  # and the pool starts again


def _fails_then_peer_dies():
    import os
    import time

    if dist.get_rank() == 0:
        raise ValueError("the real cause on rank 0")
    time.sleep(1)
    os._exit(3)


def test_a_peer_dying_after_a_failure_keeps_the_failures_traceback(pool):
    with pytest.raises(RemoteError, match="(?s)rank 0: .*the real cause on rank 0"):
        pool.run(_fails_then_peer_dies)
    assert pool.run(dist.get_world_size) == [4, 4, 4, 4]


def test_a_rank_that_dies_before_joining_fails_at_once():
    import time

    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="exited"):
        DistributedPool(world_size=2, timeout_s=120, threads_per_rank=0).start()  # set_num_threads(0) raises
    assert time.monotonic() - t0 < 60
