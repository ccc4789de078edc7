"""Hard faults through torchrun on 2 CPU ranks: a rank killed with SIGKILL mid-run or during an
async save, then a rerun that resumes by itself from the newest complete checkpoint, bit-identical
from there; torchrun --max-restarts 1 restarting the job in place; a checkpoint shard cut short.

Each launch is a real `python -m torch.distributed.run` job; the killed rank is found by its RANK
in /proc. The async save is made slow (so the kill lands inside it) by a sitecustomize module put
on the workers' PYTHONPATH by this test only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                                   reason="finds ranks through /proc (Linux)")]

STEPS = 12
ARGS = ["--training.seq_len", "32", "--training.local_batch_size", "2", "--metrics.log_freq", "1",
        "--metrics.enable_tensorboard", "false", "--metrics.disable_color_printing", "--training.seed", "7",
        "--training.deterministic", "--lr_scheduler.warmup_steps", "2", "--training.steps", str(STEPS),
        "--checkpoint.enable", "--checkpoint.interval", "4", "--checkpoint.last_save_model_only", "false"]

SLOW_WRITES = '''
import os, time
if os.environ.get("TITAN_TEST_SLOW_SAVE"):  # e.g. "step-8:0.5": that save's writes take 0.5 s each
    from torch.distributed.checkpoint import filesystem
    _which, _delay = os.environ["TITAN_TEST_SLOW_SAVE"].split(":")
    _real = filesystem._write_item
    def _slow(transforms, stream, *args, **kwargs):
        if f"{_which}.partial-" in str(getattr(stream, "name", "")):
            time.sleep(float(_delay))
        return _real(transforms, stream, *args, **kwargs)
    filesystem._write_item = _slow
'''


def _launch(out: Path, *extra: str, restarts: int = 0, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), "-m", "titan_train", *ARGS, "--job.dump_folder", str(out), *extra]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TIKTOKEN_CACHE_DIR": "", **(env or {})}
    log = open(out.parent / f"{out.name}.log", "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _rank_pid(proc: subprocess.Popen, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the launcher's descendants."""
    todo = [proc.pid]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
            return pid
        todo += [int(c) for c in children]
    return None


def _wait_for(cond, timeout: float = 240, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_rank1(proc: subprocess.Popen) -> None:
    pid = _rank_pid(proc, 1)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, tuple[float, float]]:
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert _finish(_launch(out)) == 0
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in _records(out)}


def _resumed_matches(out: Path, reference: dict, first_new: int) -> None:
    """The rerun's records from its first step on equal the uninterrupted run's, bit for bit."""
    records = _records(out)
    starts = [i for i, r in enumerate(records) if r["step"] == first_new]
    assert starts, f"no step {first_new} after the restart: {[r['step'] for r in records]}"
    rerun = records[starts[-1]:]
    assert [r["step"] for r in rerun] == list(range(first_new, STEPS + 1))
    for r in rerun:
        assert (r["loss"], r["grad_norm"]) == reference[r["step"]], f"step {r['step']} differs"


def test_sigkill_of_one_rank_mid_run_then_the_rerun_resumes_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    proc = _launch(out)
    _wait_for(lambda: (out / "checkpoint" / "step-4").is_dir() and len(_records(out)) >= 6, what="step 6")
    _kill_rank1(proc)
    assert _finish(proc) != 0
    assert sorted(p.name for p in (out / "checkpoint").iterdir() if p.name.startswith("step-"))[-1] in (
        "step-4", "step-8")
    newest = max(int(p.name.split("-")[1]) for p in (out / "checkpoint").iterdir()
                 if p.name.startswith("step-") and "." not in p.name)
    assert _finish(_launch(out)) == 0  # resubmitted unchanged: resumes by itself
    _resumed_matches(out, reference, newest + 1)


def test_sigkill_during_an_async_save_then_the_rerun_resumes_from_the_previous_one(tmp_path, reference):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_WRITES)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "TITAN_TEST_SLOW_SAVE": "step-8:0.5"}
    out = tmp_path / "run"
    proc = _launch(out, "--checkpoint.async_mode", "async", env=env)
    ckpt = out / "checkpoint"
    _wait_for(lambda: (ckpt / "step-4").is_dir() and any(p.name.startswith("step-8.partial-")
                                                           for p in ckpt.iterdir()), what="the step-8 save")
    _kill_rank1(proc)
    assert _finish(proc) != 0
    assert not (ckpt / "step-8").exists()  # never completed, so never published
    assert _finish(_launch(out)) == 0
    assert not [p for p in ckpt.iterdir() if ".partial-" in p.name]  # the dead save was cleaned up
    _resumed_matches(out, reference, 5)


def test_torchrun_max_restarts_restarts_in_place_and_resumes(tmp_path, reference):
    out = tmp_path / "run"
    proc = _launch(out, restarts=1)
    _wait_for(lambda: (out / "checkpoint" / "step-4").is_dir() and len(_records(out)) >= 6, what="step 6")
    _kill_rank1(proc)
    assert _finish(proc) == 0  # torchrun started both workers again and the job finished
    assert "resumed from" in (out.parent / "run.log").read_text()
    records = _records(out)
    restarts = [i for i in range(1, len(records)) if records[i]["step"] <= records[i - 1]["step"]]
    assert len(restarts) == 1, [r["step"] for r in records]  # one kill, one restart
    first = records[restarts[0]]["step"]
    assert first in (5, 9)  # right after the newest complete checkpoint (step 4 or 8)
    _resumed_matches(out, reference, first)


def test_a_shard_cut_short_is_named_and_nothing_is_deleted(tmp_path, reference, capsys):
    from titan_train.cli import main

    out = tmp_path / "run"
    assert _finish(_launch(out, "--training.steps", "8")) == 0
    shard = sorted((out / "checkpoint" / "step-8").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    before = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    argv = [*ARGS, "--job.dump_folder", str(out), "--training.steps", "12"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{shard} is truncated" in err and "Traceback" not in err
    assert "checkpoint.load_step = 4" in err  # the earlier complete checkpoint to fall back to
    after = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    assert after == before
