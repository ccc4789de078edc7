import pytest
from titan_mesh import LaunchEnvError, ParallelDims, ParallelDimsError, read_launch_env


def test_infers_remaining_degree():
    d = ParallelDims(dp_shard=-1, tp=2, pp=2, world_size=16)
    assert (d.dp_replicate, d.dp_shard, d.cp, d.tp, d.pp) == (1, 4, 1, 2, 2)
    assert d.dp_degree == 4 and d.non_data_parallel_size == 4
    assert [n for n, _ in d.enabled_dims()] == ["pp", "dp_shard", "tp"]


def test_any_single_degree_can_be_inferred():
    assert ParallelDims(dp_shard=2, tp=-1, world_size=8).tp == 4


def test_defaults_mean_pure_fsdp():
    d = ParallelDims(world_size=8)
    assert d.dp_shard == 8 and d.fsdp_enabled and not d.tp_enabled


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(dp_shard=2, tp=2, world_size=8), "= 4 do not match the world size 8"),
        (dict(dp_shard=0, world_size=8), "dp_shard=0 is invalid"),
        (dict(dp_shard=-1, tp=-1, world_size=8), "only one degree may be -1, got dp_shard, tp"),
        (dict(tp=-3, world_size=8), "tp=-3 is invalid"),
        (dict(dp_shard=-1, tp=3, world_size=8), "multiply to 3, which does not divide the world size 8"),
        (dict(world_size=0), "world_size must be a positive integer"),
        (dict(tp=2.0, world_size=2), "degree tp must be an integer"),
    ],
)
def test_bad_layouts_name_degrees_and_world_size(kwargs, needle):
    with pytest.raises(ParallelDimsError) as e:
        ParallelDims(**kwargs)
    assert needle in str(e.value)


def test_launch_env_torchrun_slurm_single():
    assert read_launch_env({}).source == "single"
    t = read_launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (t.rank, t.local_rank, t.world_size, t.source) == (3, 1, 8, "torchrun")
    s = read_launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5",
                         "MASTER_ADDR": "node1"})
    assert (s.rank, s.local_rank, s.world_size, s.source) == (5, 5, 16, "slurm")
    # A one-task SLURM allocation is just one process.
    assert read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).source == "single"


def test_launch_env_errors():
    with pytest.raises(LaunchEnvError, match="MASTER_ADDR is not set"):
        read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"})
    with pytest.raises(LaunchEnvError, match="RANK='x' is not an integer"):
        read_launch_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(LaunchEnvError, match="rank=4, local rank=0, world size=4"):
        read_launch_env({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


def test_errors_use_the_callers_names_and_say_what_is_allowed():
    names = {"tp": "parallelism.tensor_parallel_degree", "dp_shard": "parallelism.data_parallel_shard_degree"}
    with pytest.raises(ParallelDimsError, match=r"cannot infer parallelism.data_parallel_shard_degree: the other "
                       r"degrees multiply to 3.*parallelism.tensor_parallel_degree=3.*must be one of 1, 2, 4"):
        ParallelDims(tp=3, world_size=4, names=names)
    assert ParallelDims(tp=2, world_size=4, names=names) == ParallelDims(tp=2, world_size=4)
