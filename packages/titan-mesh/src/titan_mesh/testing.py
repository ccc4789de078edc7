"""Test helpers: a pool of N processes sharing one process group, and a fake world for plans.

Spawning processes and forming a group costs seconds; a DistributedPool does it once and then
runs any number of module-level functions on every rank, so a test class pays for one spawn.

    with DistributedPool(world_size=4) as pool:
        results = pool.run(my_module_level_fn, arg)   # one result per rank, rank order
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable, Container, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class RemoteError(AssertionError):
    """A function raised on a pool rank; the message holds that rank's traceback."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, threads: int,
            env: dict[str, str], tasks: Any, results: Any) -> None:
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    try:
        if backend != "none":
            if backend == "nccl":
                torch.cuda.set_device(rank)
            dist.init_process_group(backend, rank=rank, world_size=world_size)
    except BaseException as e:  # noqa: BLE001 - the parent decides: another port, or fail with this
        results.put((rank, "init-failed", "".join(traceback.format_exception(e))))
        return
    results.put((rank, "ready", None))
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args, kwargs = task
        try:
            results.put((rank, True, fn(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001 - report everything, including pytest.skip
            text = f"rank {rank}: " + "".join(traceback.format_exception(e))
            try:
                pickle.dumps(e)
                results.put((rank, False, (e, text)))
            except Exception:
                results.put((rank, False, (None, text)))
    if dist.is_initialized():
        dist.destroy_process_group()


class DistributedPool:
    """`world_size` spawned processes, each in one process group, running functions on demand.

    backend: "gloo" (CPU), "nccl" (one GPU per rank) or "none" (no group). A rank that raises
    fails the call with its traceback; the pool then restarts on the next call, since the other
    ranks may be stuck in a collective.
    """

    def __init__(self, world_size: int, *, backend: str = "gloo", timeout_s: float = 300.0,
                 threads_per_rank: int = 1, env: dict[str, str] | None = None) -> None:
        self.world_size = world_size
        self.backend = backend
        self.timeout_s = timeout_s
        self.threads = threads_per_rank
        self.env = dict(env or {})
        self._procs: list[Any] = []

    def start(self) -> None:
        """Spawn the ranks and wait until all of them joined the group. The free port is only free
        when it was picked: a process elsewhere (another test run) may take it before rank 0 binds
        it, so an address in use means a new port, up to three times."""
        tries = 0
        while True:
            tries += 1
            failure = self._spawn(_free_port())
            if failure is None:
                return
            self.close(force=True)
            taken = "EADDRINUSE" in failure or "address already in use" in failure
            if not taken or tries == 3:
                raise RemoteError(f"the pool's ranks could not form a process group ({tries} tries): {failure}")

    def _spawn(self, port: int) -> str | None:
        """Start the ranks on `port`; None once all are ready, else the first init failure's text."""
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(self.world_size)]
        self._procs = [
            ctx.Process(target=_worker, daemon=True,
                        args=(r, self.world_size, port, self.backend, self.threads, self.env,
                              self._tasks[r], self._results))
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        ready: set[int] = set()
        while len(ready) < self.world_size:
            try:
                rank, status, text = self._next_result(self.timeout_s, ready)
            except queue.Empty:
                self.close(force=True)
                raise TimeoutError(f"the pool's ranks did not form a process group within {self.timeout_s:.0f} s") \
                    from None
            except ChildProcessError as e:  # died before joining (import, unpickling, killed)
                return str(e)
            if status != "ready":
                return f"rank {rank}: {text}"
            ready.add(rank)
        return None

    def close(self, *, force: bool = False) -> None:
        if not self._procs:
            return
        if not force:
            for q in self._tasks:
                q.put(None)
            for p in self._procs:
                p.join(timeout=30)
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join()
        self._procs = []

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run fn(*args, **kwargs) on every rank; return the results in rank order."""
        if not self._procs or any(not p.is_alive() for p in self._procs):
            self.close(force=True)
            self.start()
        for q in self._tasks:
            q.put((fn, args, kwargs))
        out: dict[int, Any] = {}
        failure: tuple[Any, str] | None = None
        while len(out) < self.world_size:
            wait = 10.0 if failure else self.timeout_s
            try:
                rank, ok, value = self._next_result(wait, out)
            except queue.Empty:
                self.close(force=True)
                if failure:
                    break
                raise TimeoutError(f"{fn.__name__} did not finish on all ranks within {wait:.0f} s") from None
            except ChildProcessError as e:  # a rank died (killed, crashed): the others may wait forever
                self.close(force=True)
                if failure:  # an earlier error comes first (often the cause; peers then abort)
                    failure = (failure[0], f"{failure[1]}\n(and {e})")
                    break
                raise RemoteError(f"{fn.__name__}: {e}") from None
            if ok:
                out[rank] = value
            else:
                out[rank] = None
                failure = failure or value
        if failure is not None:
            exc, text = failure
            self.close(force=True)
            if exc is not None and type(exc).__name__ == "Skipped":
                raise exc
            raise RemoteError(text)
        return [out[r] for r in range(self.world_size)]

    def _next_result(self, wait: float, done: Container[int]) -> tuple[int, Any, Any]:
        """The next (rank, ok, value) within `wait` seconds (queue.Empty after), polling every few
        seconds for a rank that exited without answering (ChildProcessError)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._results.get(timeout=max(0.05, min(2.0, deadline - time.monotonic())))
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self._procs) if r not in done and not p.is_alive()]
                if dead:
                    raise ChildProcessError(f"rank {dead[0][0]} exited (code {dead[0][1]}) without a result") from None
                if time.monotonic() >= deadline:
                    raise

    def __enter__(self) -> DistributedPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def fake_world(world_size: int, rank: int = 0) -> Iterator[None]:
    """A fake default process group of `world_size` ranks in this one process.

    Meshes, DTensor placements and parallel plans can be built for 8 to 512 ranks without
    running any communication (collectives return immediately with unspecified data).
    """
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers "fake"

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def gpu_marks(count: int = 1) -> list:
    """pytest marks for tests needing `count` CUDA GPUs: tagged `gpu`, skipped without them.

    Module level: `pytestmark = gpu_marks(2)`.
    """
    import pytest

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [pytest.mark.gpu,
            pytest.mark.skipif(have < count, reason=f"needs {count} CUDA GPU(s), found {have}")]


def requires_gpus(count: int = 1) -> Callable[[Any], Any]:
    """Decorator form of gpu_marks for one test function or class."""

    def apply(obj: Any) -> Any:
        for mark in gpu_marks(count):
            obj = mark(obj)
        return obj

    return apply
