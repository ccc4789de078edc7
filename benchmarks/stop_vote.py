"""What the per-step SIGTERM check costs each rank: a blocking CPU all-reduce (Titan before
2026-12-02) against the vote Titan casts now (started without waiting, read one step later).

Each of N gloo processes runs S fake steps: an all-reduce of a 4 MiB tensor (the step's own
collectives, which keep the ranks in lockstep) plus a little compute with random jitter, then the
check. Timed: the check alone. The jitter is what a blocking check pays for at scale: it waits
for the slowest rank, which at 1,000 ranks is always somewhere behind.

    python benchmarks/stop_vote.py --world 4 --steps 200 [--out benchmarks/results/stop_vote.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _fake_step(grad: torch.Tensor, rng: random.Random, jitter_ms: float) -> None:
    dist.all_reduce(grad)
    time.sleep(rng.uniform(0.0, jitter_ms) / 1000)  # ranks finish their compute at different times


def _blocking(flag: torch.Tensor) -> bool:
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _worker(rank: int, world: int, port: int, steps: int, jitter_ms: float, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from titan_train.trainer.loop import _StopFlag

    grad = torch.zeros(1 << 20)
    results = {}
    for mode in ("blocking", "async vote"):
        rng = random.Random(rank)
        flag = _StopFlag(saves=True)
        times = []
        for _ in range(steps):
            _fake_step(grad, rng, jitter_ms)
            t0 = time.perf_counter()
            if mode == "blocking":
                _blocking(torch.tensor([0.0]))
            else:
                flag.poll()
            times.append(time.perf_counter() - t0)
        flag.restore()
        dist.barrier()
        results[mode] = times[10:]
    out[rank] = results
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--jitter-ms", type=float, default=2.0, help="uniform compute jitter per rank and step")
    ap.add_argument("--out", help="also append the table to this markdown file")
    a = ap.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(a.world, port, a.steps, a.jitter_ms, out), nprocs=a.world)
    rows = []
    for mode in ("blocking", "async vote"):
        per_rank = [statistics.mean(out[r][mode]) * 1e6 for r in range(a.world)]
        worst = [max(out[r][mode]) * 1e6 for r in range(a.world)]
        rows.append(f"| {mode} | {statistics.mean(per_rank):,.0f} | {max(worst):,.0f} |")
    table = "\n".join([
        f"{a.world} gloo ranks on {platform.node()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{a.steps} steps, compute jitter 0-{a.jitter_ms} ms per rank and step",
        "", "| SIGTERM check | mean per step (µs) | worst step (µs) |", "|---|---:|---:|", *rows])
    print(table)
    if a.out:
        with open(a.out, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
