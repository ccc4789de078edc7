"""A run's life through the CLI: finished jobs resubmitted, extended, exported beside the last full
checkpoint, the last step saved once, older model-only final checkpoints, HF initial weights."""

import json
import re

import pytest
import titan_ckpt
import torch
from titan_data import BUNDLED_TOKENIZER
from titan_train.cli import main
from titan_train.trainer.optim import ScheduleSettings, lr_factor

BASE = ["--training.seq_len", "32", "--training.local_batch_size", "2", "--metrics.log_freq", "1",
        "--metrics.enable_tensorboard", "false", "--metrics.disable_color_printing", "--training.seed", "3",
        "--lr_scheduler.warmup_steps", "2", "--checkpoint.enable", "--checkpoint.interval", "3"]


def _metrics(folder):
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _ckpt_state(folder, name):
    """One state of a DCP checkpoint folder as a flat dict (read back through torch.save)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = folder.parent / f"{folder.name}.pt"
    dcp_to_torch_save(str(folder), str(out))
    return torch.load(out, weights_only=False)[name]


def test_finished_run_resubmitted_exits_at_once_and_extended_run_continues(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--training.steps", "6", "--job.dump_folder", str(run)]) == 0
    ckpt = run / "checkpoint"
    assert titan_ckpt.list_checkpoints(ckpt, "full") == [3, 6]  # the last step stays a training state
    assert titan_ckpt.checkpoint_info(run / "export" / "step-6")["kind"] == "model_only"
    assert titan_ckpt.list_checkpoints(ckpt, "model_only") == []
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()

    assert main([*BASE, "--training.steps", "6", "--job.dump_folder", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already at step 6 of 6; nothing to train" in out and "Titan:" not in out  # nothing built
    assert (run / "metrics.jsonl").read_text() == before

    assert main([*BASE, "--training.steps", "10", "--job.dump_folder", str(run)]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "LR schedule changed since the checkpoint (training.steps 6 -> 10)" in out
    extended = _metrics(run)[6:]
    assert [r["step"] for r in extended] == [7, 8, 9, 10]
    new = ScheduleSettings(steps=10, warmup_steps=2)
    assert [r["lr"] for r in extended] == pytest.approx([8e-4 * lr_factor(k, new) for k in (7, 8, 9, 10)])
    assert (run / "export" / "step-10").is_dir()

    # The optimizer went on (AdamW counted 10 steps, not 4) and so did the data: step 10's loader
    # position equals that of a run that trained 10 steps straight.
    opt = _ckpt_state(ckpt / "step-10", "optimizer")
    counts = {v.item() for k, v in opt.items() if k.startswith("state.") and k.endswith(".step")}
    assert counts == {10.0}
    straight = tmp_path / "straight"
    assert main([*BASE, "--training.steps", "10", "--job.dump_folder", str(straight)]) == 0
    assert _ckpt_state(ckpt / "step-10", "dataloader") == \
        _ckpt_state(straight / "checkpoint" / "step-10", "dataloader")
    assert _ckpt_state(ckpt / "step-10", "train_state")["tokens_seen"] == \
        _ckpt_state(straight / "checkpoint" / "step-10", "train_state")["tokens_seen"]


def test_last_step_and_stop_step_are_saved_once(tmp_path, monkeypatch):
    saves = []
    real = titan_ckpt.CheckpointManager.save

    def counting(self, step, states, *, force=False):
        saves.append(step)
        return real(self, step, states, force=force)

    monkeypatch.setattr(titan_ckpt.CheckpointManager, "save", counting)
    assert main([*BASE, "--training.steps", "6", "--job.dump_folder", str(tmp_path / "a")]) == 0
    assert saves == [3, 6]
    saves.clear()
    assert main([*BASE, "--training.steps", "8", "--training.stop_at_step", "6",
                 "--job.dump_folder", str(tmp_path / "b")]) == 0
    assert saves == [3, 6] and not (tmp_path / "b" / "export").exists()  # not the end: no export
    saves.clear()
    assert main([*BASE, "--training.steps", "8", "--training.stop_at_step", "6",
                 "--job.dump_folder", str(tmp_path / "b")]) == 0  # resubmitted: nothing to do
    assert saves == []


def test_missing_final_export_is_written_when_resubmitted(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--training.steps", "3", "--checkpoint.last_save_model_only", "false",
                 "--job.dump_folder", str(run)]) == 0
    assert not (run / "export").exists()
    capsys.readouterr()
    assert main([*BASE, "--training.steps", "3", "--job.dump_folder", str(run)]) == 0
    out = capsys.readouterr().out
    assert "exported the final weights" in out and "step     " not in out  # no step trained
    assert titan_ckpt.checkpoint_info(run / "export" / "step-3")["kind"] == "model_only"


def _old_style_final_checkpoint(run):
    """What earlier Titan versions left: full step-3, then model-only weights in step-6's place."""
    assert main([*BASE, "--training.steps", "6", "--job.dump_folder", str(run)]) == 0
    import shutil

    ckpt = run / "checkpoint"
    shutil.rmtree(ckpt / "step-6")
    shutil.copytree(run / "export" / "step-6", ckpt / "step-6")
    marker = ckpt / "step-6" / "titan-complete.json"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "step": 6}))
    assert titan_ckpt.list_checkpoints(ckpt, "model_only") == [6]


def test_old_model_only_final_checkpoint_is_never_taken_for_a_training_state(tmp_path, capsys):
    run = tmp_path / "run"
    _old_style_final_checkpoint(run)
    capsys.readouterr()
    assert main([*BASE, "--training.steps", "6", "--job.dump_folder", str(run)]) == 0
    assert "already at step 6 of 6" in capsys.readouterr().out
    assert main([*BASE, "--training.steps", "12", "--job.dump_folder", str(run)]) == 2
    err = capsys.readouterr().err
    assert "step-6 holds model weights only" in err and "checkpoint.load_step" in err
    assert "newest full checkpoint: step 3" in err and "Traceback" not in err
    n = len(_metrics(run))
    assert main([*BASE, "--training.steps", "12", "--checkpoint.load_step", "3",
                 "--job.dump_folder", str(run)]) == 0
    assert [r["step"] for r in _metrics(run)[n:]][:2] == [4, 5]


def test_initial_load_in_hf_takes_hf_assets_path_or_refuses(tmp_path, capsys):
    first = tmp_path / "first"
    assert main([*BASE, "--training.steps", "2", "--checkpoint.last_save_in_hf",
                 "--job.dump_folder", str(first)]) == 0
    hf = first / "hf" / "step-2"
    assert (hf / "config.json").is_file()
    capsys.readouterr()
    assert main([*BASE, "--training.steps", "1", "--checkpoint.initial_load_in_hf",
                 "--job.dump_folder", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.initial_load_in_hf" in err and "model.hf_assets_path" in err
    second = tmp_path / "second"
    assert main([*BASE, "--training.steps", "1", "--checkpoint.initial_load_in_hf", "--model.hf_assets_path",
                 str(hf), "--model.tokenizer_path", str(BUNDLED_TOKENIZER), "--job.dump_folder", str(second)]) == 0
    assert f"Hugging Face safetensors from {hf}" in capsys.readouterr().out
    # the weights came over: step 1 from them starts below the fresh run's step 1 loss
    assert _metrics(second)[0]["loss"] < _metrics(first)[0]["loss"]


def test_seed_checkpoint_is_the_initial_weights_and_training_starts_at_step_1(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--checkpoint.create_seed_checkpoint", "--job.dump_folder", str(run)]) == 0
    assert titan_ckpt.checkpoint_info(run / "checkpoint" / "step-0")["kind"] == "model_only"
    capsys.readouterr()
    assert main([*BASE, "--training.steps", "2", "--job.dump_folder", str(run)]) == 0
    assert "step-0 (model only); training starts at step 1" in capsys.readouterr().out
    assert [r["step"] for r in _metrics(run)] == [1, 2]
    assert titan_ckpt.list_checkpoints(run / "checkpoint", "full") == [2]


@pytest.fixture()
def small_disk(tmp_path):
    """A 40 MiB tmpfs (needs root and mount; skipped elsewhere): room for one checkpoint of the debug
    model with plain SGD (23 MiB) but not for a second one."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_says_so_keeps_the_earlier_checkpoint_and_the_rerun_resumes(small_disk, capsys):
    import subprocess

    run = small_disk / "run"
    argv = [*BASE[:-3], "--checkpoint.enable", "--checkpoint.interval", "2", "--checkpoint.keep_latest_k", "1",
            "--optimizer.name", "SGD", "--optimizer.beta1", "0", "--checkpoint.last_save_model_only", "false",
            "--training.steps", "4", "--job.dump_folder", str(run)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert re.search(r"warning: .* has 40.0 MiB free, but this run keeps up to 1 checkpoint\(s\) of about 2\d.\d MiB",
                     captured.out)
    err = captured.err
    assert re.search(r"the disk holding .* is full: saving step 4 needs about 2\d.\d MiB .* and 1\d.\d MiB is free", err)
    assert "step-2 is the newest complete checkpoint" in err and "Traceback" not in err
    assert titan_ckpt.list_checkpoints(run / "checkpoint") == [2]
    assert [p.name for p in (run / "checkpoint").iterdir()] == ["step-2"]
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out and titan_ckpt.list_checkpoints(run / "checkpoint") == [4]
