"""titan-mesh: device meshes from parallelism degrees, distributed init, seeding, metric reductions."""

from titan_mesh.collectives import dist_max, dist_mean, dist_reduce, dist_reduce_tensor, dist_sum
from titan_mesh.distributed import (
    DistInfo,
    LaunchEnv,
    LaunchEnvError,
    default_device_type,
    destroy_distributed,
    init_distributed,
    read_launch_env,
    set_collective_timeout,
)
from titan_mesh.parallel_dims import (
    EXPERT_MESHES,
    FLATTENED_VIEWS,
    MESH_DIM_ORDER,
    ParallelDims,
    ParallelDimsError,
    get_submesh,
)
from titan_mesh.seed import set_determinism

__version__ = "0.1.0"

__all__ = [
    "EXPERT_MESHES",
    "FLATTENED_VIEWS",
    "MESH_DIM_ORDER",
    "DistInfo",
    "LaunchEnv",
    "LaunchEnvError",
    "ParallelDims",
    "ParallelDimsError",
    "default_device_type",
    "destroy_distributed",
    "dist_max",
    "dist_mean",
    "dist_reduce",
    "dist_reduce_tensor",
    "dist_sum",
    "get_submesh",
    "init_distributed",
    "read_launch_env",
    "set_collective_timeout",
    "set_determinism",
]
