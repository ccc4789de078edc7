"""Shared by the end-to-end tests: run titan-train in-process and read its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

# fp32 on CPU, small: the debug model on the bundled pre-tokenized corpus.
BASE = ["--training.seq_len", "32", "--training.local_batch_size", "2", "--training.global_batch_size", "8",
        "--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false", "--metrics.disable_color_printing",
        "--training.seed", "7", "--training.deterministic", "--lr_scheduler.warmup_steps", "2",
        "--parallelism.data_parallel_shard_degree", "-1"]


def held() -> tuple:
    """What a process holds that a finished run must give back: threads, child processes, groups."""
    import multiprocessing
    import threading

    from torch.distributed import distributed_c10d

    return (sorted(t.name for t in threading.enumerate()), len(multiprocessing.active_children()),
            len(distributed_c10d._world.pg_map))


def train(out: str, *extra: str) -> list[dict]:
    """Run titan-train with BASE + extra into `out`; return the metrics records (rank 0). The run
    must leave nothing behind (threads, processes, process groups): asserted on every rank."""
    import torch.distributed as dist
    from titan_train.cli import main

    before = held()
    code = main([*BASE, "--job.dump_folder", out, *extra])
    assert code == 0, f"titan-train exited with {code}"
    after = held()
    new_threads = sorted(set(after[0]) - set(before[0]))
    assert not new_threads and after[1] <= before[1] and after[2] <= before[2], \
        f"the run left behind: {after} (before it: {before})"
    path = Path(out) / "metrics.jsonl"
    if dist.is_initialized() and dist.get_rank() != 0:
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def compare_records(ref: list[dict], got: list[dict], name: str, rel: float = 1e-3) -> None:
    """Loss and grad norm of every step within `rel` of the reference run, and the loss falling."""
    assert [r["step"] for r in got] == [r["step"] for r in ref], name
    for a, b in zip(ref, got):
        for key in ("loss", "grad_norm"):
            gap = abs(a[key] - b[key]) / abs(a[key])
            assert gap < rel, f"{name} step {a['step']} {key}: {b[key]} vs one process {a[key]}"
    assert got[-1]["loss"] < got[0]["loss"], f"{name}: loss did not fall"
