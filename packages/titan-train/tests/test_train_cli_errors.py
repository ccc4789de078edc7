"""Bad input exits with code 2 within seconds, naming the key or path, without a traceback."""

import subprocess
import sys
import time

import pytest
import torch
from titan_train.cli import main


def _fail(capsys, argv, monkeypatch=None, env=None):
    if env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    t0 = time.time()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert time.time() - t0 < 20
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--training.stepz", "3"], "Did you mean 'training.steps'"),
    (["--training.steps", "x"], "training.steps: expected an integer"),
    (["--model.flavor", "8C"], "8C"),
    (["--model.name", "llama5"], "llama5"),
    (["--training.dataset", "c5"], "c5"),
    (["--model.tokenizer_path", "/nonexistent/tokenizer.model"], "/nonexistent/tokenizer.model"),
    (["--job.dump_folder", "/proc/titan_cannot_write"], "job.dump_folder"),
    (["--checkpoint.enable", "--checkpoint.folder", "/proc/titan_cannot_write"],
     "checkpoint.folder = '/proc/titan_cannot_write' is not writable"),
    pytest.param(["--model.converters", "quantize.linear.float8"], "add --quantize.linear.float8.emulate",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="float8 runs on this GPU")),
    # options that need other options
    (["--training.enable_cpu_offload"], "training.enable_cpu_offload needs FSDP"),
    (["--training.stop_at_step", "5"], "needs checkpoint.enable"),
    (["--training.deterministic"], "needs training.seed"),
    (["--parallelism.enable_async_tensor_parallel"], "tensor_parallel_degree = 1, compile.enable = False"),
    (["--validation.enable", "--validation.steps", "0"], "validation.steps = 0"),
    (["--validation.enable", "--validation.seq_len", "512"], "longer than training.seq_len = 256"),
    (["--compile.enable", "--compile.backend", "inductr"], "Did you mean 'inductor'"),
])
def test_bad_input_is_one_message(capsys, argv, expected, tmp_path):
    extra = [] if "--job.dump_folder" in argv else ["--job.dump_folder", str(tmp_path)]
    assert expected in _fail(capsys, [*argv, *extra])


def test_degrees_must_match_world_size(capsys, monkeypatch, tmp_path):
    err = _fail(capsys, ["--parallelism.tensor_parallel_degree", "3", "--job.dump_folder", str(tmp_path)],
                monkeypatch, {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    # the config keys the user wrote, never titan-mesh's short names, and what would be allowed
    assert "cannot infer parallelism.data_parallel_shard_degree" in err
    assert "parallelism.tensor_parallel_degree=3" in err and "must be one of 1, 2" in err
    assert "tp=3" not in err and "dp_shard=" not in err
    err = _fail(capsys, ["--parallelism.tensor_parallel_degree", "2", "--parallelism.data_parallel_shard_degree",
                         "2", "--job.dump_folder", str(tmp_path)], monkeypatch, {"WORLD_SIZE": "2"})
    assert "parallelism.data_parallel_shard_degree=2 x" in err and "= 4 do not match the world size 2" in err


@pytest.mark.parametrize("world, argv, expected", [
    (2, ["--parallelism.context_parallel_degree", "2", "--model.attn_backend", "flex"],
     "ring attention patches SDPA only"),
    (4, ["--parallelism.context_parallel_degree", "2", "--parallelism.pipeline_parallel_degree", "2"],
     "context_parallel_method = 'ulysses' combines with pipeline parallel"),
    (2, ["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "1",
         "--parallelism.fsdp_reshard_after_forward", "never"], "fsdp_reshard_after_forward = 'never'"),
    (2, ["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "1",
         "--training.mixed_precision_reduce", "bfloat16"], "training.mixed_precision_reduce = 'bfloat16'"),
])
def test_layouts_that_would_compute_something_else_are_refused(capsys, monkeypatch, tmp_path, world, argv, expected):
    err = _fail(capsys, [*argv, "--job.dump_folder", str(tmp_path)], monkeypatch,
                {"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0"})
    assert expected in err


def test_tp_must_divide_heads(capsys, monkeypatch, tmp_path):
    # debugmodel: 16 heads; checked before any process group exists
    err = _fail(capsys, ["--parallelism.tensor_parallel_degree", "3", "--parallelism.data_parallel_shard_degree",
                         "1", "--job.dump_folder", str(tmp_path)],
                monkeypatch, {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                              "MASTER_PORT": "1"})
    assert "n_heads=16 is not divisible by tensor-parallel degree parallelism.tensor_parallel_degree=3" in err
    assert "degrees dividing n_heads=16 and n_kv_heads=8: 1, 2, 4, 8" in err and "tp=3" not in err


def test_broken_toml_through_the_console_script(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nsteps = 3\n")
    proc = subprocess.run([sys.executable, "-m", "titan_train", "--config", str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr and "Traceback" not in proc.stderr


def test_help_and_print_config(capsys):
    assert main(["--help"]) == 0
    assert "--parallelism.tensor_parallel_degree" in capsys.readouterr().out
    assert main(["--print-config", "--training.steps", "5"]) == 0
    assert "steps = 5" in capsys.readouterr().out


def test_divergence_stops_and_keeps_the_last_good_checkpoint(capsys, tmp_path):
    code = main(["--training.steps", "6", "--optimizer.lr", "1e9", "--training.max_norm", "0",
                 "--lr_scheduler.warmup_steps", "0", "--training.seq_len", "32", "--metrics.log_freq", "1",
                 "--metrics.enable_tensorboard", "false", "--checkpoint.enable", "--checkpoint.interval", "1",
                 "--job.dump_folder", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 3 and "training diverged at step 2" in err and "step 1" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["step-1"]


def test_divergence_between_log_steps_is_caught_before_the_next_save(capsys, tmp_path):
    """Numbers are read one step late off log steps: a NaN at step 2 still stops the run (at
    step 3) before the step-4 checkpoint could hold the bad state."""
    code = main(["--training.steps", "6", "--optimizer.lr", "1e9", "--training.max_norm", "0",
                 "--lr_scheduler.warmup_steps", "0", "--training.seq_len", "32", "--metrics.log_freq", "100",
                 "--metrics.enable_tensorboard", "false", "--checkpoint.enable", "--checkpoint.interval", "4",
                 "--job.dump_folder", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 3 and "training diverged at step 2" in err and "no checkpoint was written" in err
    folder = tmp_path / "checkpoint"
    assert not folder.exists() or not [p for p in folder.iterdir() if p.name.startswith("step-")]


def test_wandb_asked_but_not_installed(capsys, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    err = _fail(capsys, ["--metrics.enable_wandb", "--job.dump_folder", str(tmp_path)])
    assert "wandb is not installed" in err and "titan-train[wandb]" in err
