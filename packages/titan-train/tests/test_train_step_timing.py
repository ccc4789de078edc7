"""The logged step time is the GPU's: a log window that read no step's numbers (step 1, and the step
after one read at once: step 2, or after a save) waits for the device before it is timed, and no
other window does (steady steps stay one-step pipelined)."""

from titan_train.cli import main
from titan_train.trainer import loop
from titan_train.trainer.step import StepRunner


def test_only_windows_without_a_read_wait_for_the_device(monkeypatch, tmp_path):
    queued, waits = [0], []
    real_run = StepRunner.run

    def run(self, data):
        queued[0] += 1
        return real_run(self, data)

    monkeypatch.setattr(StepRunner, "run", run)
    monkeypatch.setattr(loop, "_synchronize", lambda device: waits.append(queued[0]))
    args = ["--training.steps", "7", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
            "--metrics.log_freq", "1", "--training.seed", "3", "--training.local_batch_size", "2",
            "--checkpoint.enable", "--checkpoint.interval", "4", "--job.dump_folder", str(tmp_path)]
    assert main(args) == 0
    # step 1 (first window), step 2 (step 1 was read at once), step 5 (step 4 saved: read at once)
    assert waits == [1, 2, 5]
