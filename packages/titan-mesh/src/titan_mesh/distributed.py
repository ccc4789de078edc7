"""Process-group setup from the launcher's environment (torchrun, or SLURM's srun alone)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


class LaunchEnvError(RuntimeError):
    """The launcher's environment variables are missing or inconsistent."""


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    local_rank: int
    world_size: int
    source: str  # "torchrun", "slurm" or "single"


@dataclass(frozen=True)
class DistInfo:
    """What init_distributed set up: this process's place and device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when no process group was created

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_var(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise LaunchEnvError(f"environment variable {name}={raw!r} is not an integer") from None


def read_launch_env(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Rank, local rank and world size from torchrun's variables, else SLURM's, else one process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
        local = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        source = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _int_var(env, "SLURM_NTASKS") > 1:
        # srun started one task per GPU without torchrun: rendezvous through MASTER_ADDR/PORT.
        rank, world = _int_var(env, "SLURM_PROCID"), _int_var(env, "SLURM_NTASKS")
        local = _int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        if "MASTER_ADDR" not in env:
            raise LaunchEnvError(
                "SLURM launched several tasks but MASTER_ADDR is not set; export it (e.g. the first "
                "host of `scontrol show hostnames $SLURM_JOB_NODELIST`) or launch through torchrun"
            )
        source = "slurm"
    else:
        return LaunchEnv(0, 0, 1, "single")
    if world < 1 or not 0 <= rank < world or local < 0:
        raise LaunchEnvError(f"inconsistent launch environment: rank={rank}, local rank={local}, world size={world}")
    return LaunchEnv(rank, local, world, source)


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def init_distributed(
    *,
    device_type: str | None = None,
    backend: str | None = None,
    timeout_s: float = 600.0,
    single_process_group: bool = False,
    env: Mapping[str, str] | None = None,
) -> DistInfo:
    """Set this process's device and, for several processes, the default process group.

    device_type: "cuda" or "cpu" (default: cuda when available). backend: default
    "cuda:nccl,cpu:gloo" on CUDA (CPU tensors can still be reduced) and "gloo" on CPU.
    With one process no group is created unless `single_process_group` asks for one (FSDP on one
    device needs it); that group uses an in-memory store, so no port is opened.
    """
    launch = read_launch_env(env)
    device_type = device_type or default_device_type()
    if device_type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise LaunchEnvError("device_type 'cuda' was requested but no CUDA device is visible")
        if launch.local_rank >= count:
            raise LaunchEnvError(
                f"local rank {launch.local_rank} has no GPU: only {count} visible on this node "
                "(is --nproc_per_node larger than the GPU count?)"
            )
        torch.cuda.set_device(launch.local_rank)
        device = torch.device("cuda", launch.local_rank)
    else:
        device = torch.device(device_type)
    if backend is None:
        backend = "cuda:nccl,cpu:gloo" if device_type == "cuda" else "gloo"

    if dist.is_initialized():  # a caller's group: used as it is (its backend and timeout stay)
        return DistInfo(dist.get_rank(), launch.local_rank, dist.get_world_size(), device, dist.get_backend())
    timeout = timedelta(seconds=timeout_s)
    if launch.world_size > 1:
        if launch.source == "slurm":
            os.environ.setdefault("MASTER_PORT", "29500")
        store = _elastic_store(os.environ if env is None else env, launch.world_size, timeout)
        dist.init_process_group(
            backend=backend,
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timeout,
            device_id=device if device_type == "cuda" else None,
            **({"store": store} if store is not None else {}),
        )
    elif single_process_group:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        backend = None
    return DistInfo(launch.rank, launch.local_rank, launch.world_size, device, backend)


def _elastic_store(env: Mapping[str, str], world_size: int, timeout: timedelta) -> dist.Store | None:
    """Under torchrun the agent hosts the rendezvous store and keeps it across restarts
    (--max-restarts): the keys a killed attempt left there (its ranks' gloo / NCCL addresses) would
    send the restarted ranks to dead peers ("Connection refused", measured with torch 2.13). Each
    attempt gets its own key prefix. None outside torchelastic: torch's env:// default applies."""
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world_size, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"titan/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def set_collective_timeout(timeout_s: float, groups: Iterable[dist.ProcessGroup] = (), *,
                           barrier: bool = True) -> None:
    """Set the collective timeout of the default process group and of `groups` (e.g.
    ParallelDims.process_groups()), after a barrier so that no rank lowers it while another is
    still in slower work before it. Trainers start with a long timeout for the first step
    (compilation, checkpoint loading) and lower it afterwards, so a hung rank fails fast.
    barrier=False for restoring a timeout where other ranks may be gone (error paths).
    No process group: nothing to do."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if not timeout_s > 0:
        raise ValueError(f"collective timeout must be > 0 seconds, got {timeout_s!r}")
    if barrier:
        dist.barrier()
    timeout = timedelta(seconds=timeout_s)
    seen: set[int] = set()
    for group in (None, *groups):
        key = id(group)
        if key in seen:
            continue
        seen.add(key)
        dist.distributed_c10d._set_pg_timeout(timeout, group)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
