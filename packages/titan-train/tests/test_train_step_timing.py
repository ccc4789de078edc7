"""Logged step times come from clock marks taken after each logged step's work is queued (device
events on CUDA), read only once the step's numbers are: so step 1, step 2, and the steps around a
save or a validation report the time of their own steps, however long the host waited or queued.

Here a fake device clock advances by exactly 2 s per queued step: every logged step time must be 2 s
(a window of k steps: 2k s) whatever the log frequency, saves or validation."""

import json

import pytest
from titan_train.cli import main
from titan_train.trainer import loop
from titan_train.trainer.step import StepRunner

SECONDS_PER_STEP = 2.0


@pytest.fixture
def device_clock(monkeypatch):
    queued = [0]
    real_run = StepRunner.run

    def run(self, data):
        queued[0] += 1
        return real_run(self, data)

    class FakeClock:
        def __init__(self, device):
            pass

        def mark(self):
            return queued[0] * SECONDS_PER_STEP    # the device's time once it has run what is queued

        def seconds(self, start, end):
            return end - start

    monkeypatch.setattr(StepRunner, "run", run)
    monkeypatch.setattr(loop, "StepClock", FakeClock)


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("log_freq", [1, 3])
def test_every_logged_step_time_is_its_own_steps(device_clock, tmp_path, log_freq):
    args = ["--training.steps", "7", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
            "--metrics.log_freq", str(log_freq), "--training.seed", "3", "--training.local_batch_size", "2",
            "--checkpoint.enable", "--checkpoint.interval", "4", "--validation.enable", "--validation.freq", "5",
            "--validation.steps", "1", "--validation.seq_len", "32", "--job.dump_folder", str(tmp_path)]
    assert main(args) == 0
    records = [r for r in _records(tmp_path) if "step_time_s" in r]
    logged = [r["step"] for r in records]
    assert logged == ([1, 2, 3, 4, 5, 6, 7] if log_freq == 1 else [1, 3, 6, 7])
    if log_freq == 1:  # a logged validation step carries its validation loss in the same record
        assert "validation_loss" in records[4] and "validation_loss" not in records[3]
    for r in records:
        assert r["step_time_s"] == pytest.approx(SECONDS_PER_STEP), r
        assert r["tokens_per_second"] == pytest.approx(2 * 32 / SECONDS_PER_STEP), r
