"""Options that only change what a run prints, saves or compiles with, checked end to end."""

from titan_train.cli import main


def test_description_model_print_first_step_checkpoint_and_compile_backend(capsys, tmp_path):
    code = main(["--training.steps", "2", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
                 "--job.description", "hello from the test", "--model.print_after_conversion",
                 "--checkpoint.enable", "--checkpoint.interval", "100", "--checkpoint.enable_first_step_checkpoint",
                 "--compile.enable", "--compile.backend", "eager", "--job.dump_folder", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "hello from the test" in out and "Transformer(" in out and "TransformerBlock(" in out
    saved = sorted(p.name for p in (tmp_path / "checkpoint").iterdir() if p.name.startswith("step-"))
    assert saved[0] == "step-1"  # besides the end-of-run save


def test_unknown_compile_backend_is_torchs_error_before_training(capsys, tmp_path):
    code = main(["--training.steps", "1", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
                 "--compile.enable", "--compile.backend", "no_such_backend", "--job.dump_folder", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "compile.backend" in err and "no_such_backend" in err and "Traceback" not in err
