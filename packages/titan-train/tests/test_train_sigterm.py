"""SIGTERM (preemption) saves a checkpoint at the end of the step and exits; the next run resumes."""

import json
import os
import signal
import threading
import time
from pathlib import Path

from titan_train.cli import main

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
