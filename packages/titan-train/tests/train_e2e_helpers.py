"""Shared by the end-to-end tests: run titan-train in-process and read its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

# fp32 on CPU, small: the debug model on the bundled pre-tokenized corpus.
BASE = ["--training.seq_len", "32", "--training.local_batch_size", "2", "--training.global_batch_size", "8",
        "--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false", "--metrics.disable_color_printing",
        "--training.seed", "7", "--training.deterministic", "--lr_scheduler.warmup_steps", "2",
        "--parallelism.data_parallel_shard_degree", "-1"]


def train(out: str, *extra: str) -> list[dict]:
    """Run titan-train with BASE + extra into `out`; return the metrics records (rank 0)."""
    import torch.distributed as dist
    from titan_train.cli import main

    code = main([*BASE, "--job.dump_folder", out, *extra])
    assert code == 0, f"titan-train exited with {code}"
    path = Path(out) / "metrics.jsonl"
    if dist.is_initialized() and dist.get_rank() != 0:
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
