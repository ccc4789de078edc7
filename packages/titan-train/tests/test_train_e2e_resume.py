"""Stop after step 10, resume to 20: losses bit-identical to one uninterrupted 20-step run
(FSDP on 2 ranks, async checkpointing, deterministic CPU). SIGTERM reaching one rank stops both at
the same step, with one save, and the next run resumes there."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from titan_mesh.testing import DistributedPool
from train_e2e_helpers import train

ARGS = ["--training.steps", "20", "--checkpoint.enable", "--checkpoint.interval", "5",
        "--checkpoint.async_mode", "async", "--checkpoint.last_save_model_only", "false"]


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(world_size=2) as p:
        yield p


def _run(out: str, extra: list[str]) -> list[dict]:
    return train(out, *ARGS, *extra)


def test_resume_is_bit_identical(pool, tmp_path):
    full = pool.run(_run, str(tmp_path / "full"), [])[0]
    first = pool.run(_run, str(tmp_path / "split"), ["--training.stop_at_step", "10"])[0]
    second = pool.run(_run, str(tmp_path / "split"), [])[0][len(first):]  # metrics.jsonl appends
    assert [r["step"] for r in first] == list(range(1, 11))
    assert [r["step"] for r in second] == list(range(11, 21))
    assert [r["loss"] for r in first + second] == [r["loss"] for r in full]
    assert [r["grad_norm"] for r in first + second] == [r["grad_norm"] for r in full]
    assert (tmp_path / "split" / "checkpoint" / "step-20").is_dir()


def _votes(at: int) -> int:
    """Rank 1 alone is signalled at iteration `at`; the iteration at which each rank stops."""
    import torch.distributed as dist
    from titan_train.trainer.loop import _StopFlag

    flag = _StopFlag(saves=True)
    try:
        for i in range(1, 10):
            if i == at and dist.get_rank() == 1:
                flag.requested = True
            if flag.poll():
                return i
        return -1
    finally:
        flag.restore()


def test_stop_vote_is_one_step_late_and_the_same_on_every_rank(pool):
    assert pool.run(_votes, 3) == [4, 4]


def _signal_rank1_after(metrics: Path, steps: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.02)


def _sigterm_on_rank1(out: str, extra: list[str]) -> list[dict]:
    import torch.distributed as dist

    if dist.get_rank() == 1:  # rank 0 writes the metrics; rank 1 alone gets the signal
        threading.Thread(target=_signal_rank1_after, args=(Path(out) / "metrics.jsonl", 3), daemon=True).start()
    return train(out, "--training.steps", "500", "--checkpoint.enable", "--checkpoint.interval", "1000",
                 "--checkpoint.last_save_model_only", "false", *extra)


def test_sigterm_on_one_rank_stops_every_rank_at_one_step(pool, tmp_path):
    out = tmp_path / "run"
    first = pool.run(_sigterm_on_rank1, str(out), [])[0]
    saved = [p.name for p in (out / "checkpoint").iterdir()]
    assert len(saved) == 1 and saved[0] == f"step-{first[-1]['step']}" and 3 <= first[-1]["step"] < 500
    stop = first[-1]["step"]
    more = pool.run(_run, str(out), ["--training.steps", "500", "--training.stop_at_step", str(stop + 2),
                                     "--checkpoint.async_mode", "disabled"])[0][len(first):]
    assert [r["step"] for r in more] == [stop + 1, stop + 2]
