"""SIGTERM (preemption) saves a checkpoint at the end of the step and exits; the next run resumes."""

import json
import os
import signal
import threading
import time
from pathlib import Path

from titan_train.cli import main
from titan_train.trainer.loop import _StopFlag

ARGS = ["--training.steps", "200", "--training.seq_len", "32", "--training.local_batch_size", "2",
        "--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false", "--checkpoint.enable",
        "--checkpoint.interval", "1000", "--metrics.disable_color_printing"]


def _kill_after_three_steps(metrics: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.05)


def test_sigterm_saves_and_the_next_run_resumes(tmp_path):
    out = tmp_path / "run"
    killer = threading.Thread(target=_kill_after_three_steps, args=(out / "metrics.jsonl",), daemon=True)
    killer.start()
    assert main([*ARGS, "--job.dump_folder", str(out)]) == 0
    steps = [p.name for p in (out / "checkpoint").iterdir()]
    assert len(steps) == 1 and steps[0].startswith("step-")
    saved = int(steps[0].split("-")[1])
    assert 3 <= saved < 200
    first = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert first[-1] == saved
    assert main([*ARGS, "--job.dump_folder", str(out), "--training.stop_at_step", str(saved + 2)]) == 0
    records = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[len(first):] == [saved + 1, saved + 2]



def _kill_after_first_step(metrics: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and metrics.read_text().strip():
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.05)


def test_sigterm_without_checkpoints_stops_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    killer = threading.Thread(target=_kill_after_first_step, args=(out / "metrics.jsonl",), daemon=True)
    killer.start()
    before = signal.getsignal(signal.SIGTERM)
    code = main([*ARGS[:10], "--metrics.disable_color_printing", "--job.dump_folder", str(out)])
    killer.join()
    assert code == 143
    assert "checkpoint.enable off (nothing to save): stopped during step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is gone afterwards


def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the Python-level handler runs on the main thread at the next bytecode


def test_repeated_sigterms_do_not_cut_a_save_short():
    # Under SLURM (cgroup tracking) a worker gets SIGTERM from SLURM and again from torchrun.
    flag = _StopFlag(saves=True)
    flag.install()
    try:
        flag.step = 7
        _signal_self()
        assert flag.requested  # asks for a save at the end of the step
        _signal_self()         # raises nothing: the save still happens
        assert flag.requested and flag.poll()
    finally:
        flag.restore()
