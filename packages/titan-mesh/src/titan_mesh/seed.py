"""One call that seeds every rank, and the deterministic-algorithms switch."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh


def _agree_on_seed(seed: int | None, device: torch.device) -> int:
    """Without a seed, rank 0 draws one and broadcasts it so all ranks start alike."""
    if seed is not None:
        return int(seed)
    drawn = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device="cpu")
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        drawn = drawn.to(device)
        dist.broadcast(drawn, src=0)
    return int(drawn.item())


def set_determinism(
    seed: int | None,
    *,
    mesh: DeviceMesh | None = None,
    distinct_along: Sequence[str] = (),
    deterministic: bool = False,
    device: torch.device | str = "cpu",
) -> int:
    """Seed torch (CPU and CUDA), `random` and numpy on every rank; return the seed used.

    By default every rank gets the same seed. That is what Titan's models need: their
    `init_weights()` derives each parameter's generator from the seed and the parameter's name,
    so data-parallel replicas, TP shards and pipeline stages initialize exactly as one process
    would. Name mesh dims in `distinct_along` (e.g. ("pp",)) to offset the seed by the rank's
    coordinate there, for code that wants independent randomness per stage.

    deterministic=True selects deterministic kernels (cuBLAS workspace, cuDNN, torch's
    deterministic algorithms) so reruns give bit-identical losses, at some speed cost. An op
    that has no deterministic kernel still runs, with torch's warning naming it (warn_only), so
    a run is bit-identical only when no such warning appears.
    """
    device = torch.device(device)
    seed = _agree_on_seed(seed, device)
    offset = 0
    if mesh is not None and distinct_along:
        names = mesh.mesh_dim_names or ()
        stride = 1
        for name in distinct_along:
            if name not in names:
                continue  # axis not enabled: degree 1, contributes nothing
            sub = mesh[name]
            offset += sub.get_local_rank() * stride
            stride *= sub.size()
    local_seed = (seed + offset) % (2**63)
    torch.manual_seed(local_seed)
    random.seed(local_seed)
    try:
        import numpy as np

        np.random.seed(local_seed % (2**32))
    except ImportError:
        pass
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.utils.deterministic.fill_uninitialized_memory = True
    return seed
