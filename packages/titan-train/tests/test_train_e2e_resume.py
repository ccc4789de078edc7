"""Stop after step 10, resume to 20: losses bit-identical to one uninterrupted 20-step run
(FSDP on 2 ranks, async checkpointing, deterministic CPU)."""

from titan_mesh.testing import DistributedPool
from train_e2e_helpers import train

ARGS = ["--training.steps", "20", "--checkpoint.enable", "--checkpoint.interval", "5",
        "--checkpoint.async_mode", "async", "--checkpoint.last_save_model_only", "false"]


def _run(out: str, extra: list[str]) -> list[dict]:
    return train(out, *ARGS, *extra)


def test_resume_is_bit_identical(tmp_path):
    with DistributedPool(world_size=2) as pool:
        full = pool.run(_run, str(tmp_path / "full"), [])[0]
        first = pool.run(_run, str(tmp_path / "split"), ["--training.stop_at_step", "10"])[0]
        second = pool.run(_run, str(tmp_path / "split"), [])[0][len(first):]  # metrics.jsonl appends
    assert [r["step"] for r in first] == list(range(1, 11))
    assert [r["step"] for r in second] == list(range(11, 21))
    assert [r["loss"] for r in first + second] == [r["loss"] for r in full]
    assert [r["grad_norm"] for r in first + second] == [r["grad_norm"] for r in full]
    assert (tmp_path / "split" / "checkpoint" / "step-20").is_dir()
