"""Options that only change what a run prints, saves or compiles with, checked end to end."""
import contextlib

from titan_train.cli import main


def test_description_model_print_first_step_checkpoint_and_compile_backend(capsys, tmp_path):
    code = main(["--training.steps", "2", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
                 "--job.description", "hello from the test", "--model.print_after_conversion",
                 "--checkpoint.enable", "--checkpoint.interval", "100", "--checkpoint.enable_first_step_checkpoint",
                 "--compile.enable", "--compile.backend", "eager", "--job.dump_folder", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "hello from the test" in out and "Transformer(" in out and "DecoderBlock(" in out
    saved = sorted(p.name for p in (tmp_path / "checkpoint").iterdir() if p.name.startswith("step-"))
    assert saved[0] == "step-1"  # besides the end-of-run save


def test_unknown_compile_backend_is_torchs_error_before_training(capsys, tmp_path):
    code = main(["--training.steps", "1", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
                 "--compile.enable", "--compile.backend", "no_such_backend", "--job.dump_folder", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "compile.backend" in err and "no_such_backend" in err and "Traceback" not in err


def _metrics(folder):
    import json

    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_initial_load_restores_every_part_but_the_excluded_ones(tmp_path):
    base = ["--training.seq_len", "32", "--metrics.enable_tensorboard", "false", "--metrics.log_freq", "1",
            "--training.seed", "3"]
    first = tmp_path / "first"
    assert main([*base, "--training.steps", "4", "--checkpoint.enable", "--checkpoint.interval", "4",
                 "--checkpoint.last_save_model_only", "false", "--job.dump_folder", str(first)]) == 0
    src = str(first / "checkpoint")
    # no checkpointing of its own, full initial load: the run continues at step 5
    cont = tmp_path / "cont"
    assert main([*base, "--training.steps", "6", "--checkpoint.initial_load_path", src,
                 "--checkpoint.initial_load_model_only", "false", "--job.dump_folder", str(cont)]) == 0
    assert [r["step"] for r in _metrics(cont)] == [5, 6]
    # train_state excluded: the weights (and optimizer) come over, the step count starts again
    fresh = tmp_path / "fresh"
    assert main([*base, "--training.steps", "2", "--checkpoint.initial_load_path", src,
                 "--checkpoint.initial_load_model_only", "false", "--checkpoint.exclude_from_loading",
                 "train_state,lr_scheduler,dataloader", "--job.dump_folder", str(fresh)]) == 0
    runs = _metrics(fresh)
    assert [r["step"] for r in runs] == [1, 2] and runs[0]["loss"] < _metrics(first)[0]["loss"] - 0.05


def test_model_family_float8_skip_joins_the_configured_filter():
    import dataclasses

    from titan_models import get_model_spec
    from titan_train.config import build_config
    from titan_train.plan import float8_options

    spec = dataclasses.replace(get_model_spec("llama3"), float8_skip=("attention.wk", "output"))
    cfg = build_config(["--quantize.linear.float8.filter_fqns", "output,auto_filter_small_kn",
                        "--model.converters", "quantize.linear.float8"])
    options = float8_options(cfg, spec)
    assert options.skip == ("output", "attention.wk") and options.skip_small
    assert float8_options(build_config([]), spec) is None


def test_dataset_config_and_mode_reach_the_loader(tmp_path, capsys, monkeypatch):
    import json

    import torch
    from titan_train.cli import main
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    monkeypatch.setenv("TITAN_DATA_CACHE", str(tmp_path / "cache"))  # local files tokenized once, here

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"document {i} " * 40}) for i in range(40)))
    base = ["--training.steps", "2", "--training.seq_len", "32", "--training.local_batch_size", "2",
            "--metrics.enable_tensorboard", "false", "--training.dataset", str(data)]
    assert main([*base, "--training.dataset_config", "en", "--job.dump_folder", str(tmp_path / "a")]) == 2
    assert "dataset_config 'en' applies to Hugging Face Hub datasets" in capsys.readouterr().err
    out = tmp_path / "b"
    assert main([*base, "--training.dataset_mode", "pretokenized", "--checkpoint.enable",
                 "--job.dump_folder", str(out)]) == 0
    dcp_to_torch_save(str(out / "checkpoint" / "step-2"), str(tmp_path / "s.pt"))
    loader = torch.load(tmp_path / "s.pt", weights_only=False)["dataloader"]
    assert list(loader) == ["all_ranks"]  # the layout-independent state: resumes on any dp degree


def test_qwen3_debug_trains_on_one_cpu_process(tmp_path, capsys):
    from titan_train.cli import main

    assert main(["--config", "qwen3_debug", "--training.steps", "20", "--training.seq_len", "64",
                 "--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false", "--training.seed", "1",
                 "--job.dump_folder", str(tmp_path)]) == 0
    assert "Titan: qwen3 debugmodel" in capsys.readouterr().out
    losses = [r["loss"] for r in _metrics(tmp_path)]
    assert len(losses) == 20 and sum(losses[-3:]) / 3 < losses[0] - 0.5


def test_one_gpu_bf16_uses_per_block_casts_unless_fsdp_is_asked_for():
    import pytest
    import torch
    from titan_train.config import build_config
    from titan_train.errors import ConfigError
    from titan_train.plan import make_plan

    def plan(*args, device="cuda", world=1):
        return make_plan(build_config(list(args)), world_size=world, device_type=device, vocab_size=2048)

    one = plan()
    assert (one.precision.mode, one.parallel.dp, one.parallel.cast_dtype) == ("cast", None, torch.bfloat16)
    assert one.precision.compute_bytes == 2
    for args in (["--parallelism.single_gpu_fsdp"], ["--training.enable_cpu_offload"]):
        fsdp = plan(*args)  # FSDP's own options keep FSDP on one GPU
        assert (fsdp.precision.mode, fsdp.parallel.dp, fsdp.parallel.cast_dtype) == ("fsdp", "fsdp", None), args
    keep = plan("--parallelism.fsdp_reshard_after_forward", "never")  # the casts keep theirs for backward
    assert (keep.parallel.cast_dtype, keep.parallel.fsdp.reshard_after_forward) == (torch.bfloat16, False)
    assert plan("--training.mixed_precision_param", "float32").parallel.cast_dtype is None
    assert plan(device="cpu").precision.mode == "off"
    assert plan(world=2).parallel.dp == "fsdp" and plan(world=2).parallel.cast_dtype is None
    with pytest.raises(ConfigError, match="parallelism.single_gpu_fsdp"):
        plan("--parallelism.single_gpu_fsdp", device="cpu")


def test_clipping_inside_fused_adamw_updates_like_clipping_the_gradients():
    """Fused AdamW reads the clip as its grad_scale: the same update as scaling every gradient
    first, without that pass (fails if the scale is inverted or left on the optimizer)."""
    import copy
    import math

    import torch
    from titan_parallel import clip_grad_norm_
    from titan_train.trainer.step import StepRunner

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    ref = copy.deepcopy(model)
    data = [(torch.randn(8, 16) * 10, torch.randn(8, 4)) for _ in range(4)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    runner = StepRunner(parts=[model], optimizers=[opt], schedulers=[], device=torch.device("cpu"), accum_steps=1,
                        max_norm=0.5, loss_fn=lambda out, y: torch.nn.functional.mse_loss(out, y),
                        clip_fn=lambda params, max_norm: clip_grad_norm_(params, max_norm),
                        train_context=lambda batch: contextlib.nullcontext())
    assert runner.clip_in_optimizer
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, foreach=False)
    clipped = 0
    for x, y in data:
        result = runner.run(iter([(x, y)]))
        ref_opt.zero_grad()
        torch.nn.functional.mse_loss(ref(x), y).backward()
        norm = clip_grad_norm_(list(ref.parameters()), 0.5)
        ref_opt.step()
        clipped += norm.item() > 0.5
        assert math.isclose(result.grad_norm.item(), norm.item(), rel_tol=1e-5)
        assert not hasattr(opt, "grad_scale")
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert clipped >= 2  # the clip was exercised


def test_mfu_is_against_the_bf16_peak_with_the_fp8_one_beside_it_for_float8():
    """As torchtitan reports it: a float8 run's MFU over the bf16 peak; `mfu_fp8_peak` labelled."""
    from types import SimpleNamespace

    from titan_train.trainer.hardware import Peak
    from titan_train.trainer.metrics import MetricsLogger
    from titan_train.trainer.run import Run

    batch = SimpleNamespace(local_tokens_per_step=1000, tokens_per_step=1000)

    def record(float8):
        plan = SimpleNamespace(batch=batch, flops_per_token=1e9, float8=object() if float8 else None)
        run = Run(cfg=None, device=None, world_size=1, parts=[], optimizers=[], schedulers=[], loader=None,
                  step_runner=None, metrics=None, state=None, loss_mesh=None, peak=Peak("H", 1e15, 2e15), plan=plan)
        return run.metric_record(1, 2.0, 1.0, 1e-3, window_tokens=1000, elapsed=0.002, data_s=0.0)

    bf16, fp8 = record(False), record(True)
    assert bf16["tflops"] == fp8["tflops"] == 500.0
    assert bf16["mfu"] == fp8["mfu"] == 50.0 and "mfu_fp8_peak" not in bf16
    assert fp8["mfu_fp8_peak"] == 25.0
    console = SimpleNamespace(s=SimpleNamespace(color=False))
    assert "mfu 50.0% (of fp8 peak 25.0%)" in MetricsLogger._console_line(console, fp8, 10, 0.1)
    assert "fp8" not in MetricsLogger._console_line(console, bf16, 10, 0.1)


def test_compile_mode_reaches_every_block_and_the_loss(monkeypatch, tmp_path):
    import torch

    seen = []
    real = torch.compile

    def recording(fn=None, **kwargs):
        seen.append(kwargs.get("mode"))
        return real(fn, **{k: v for k, v in kwargs.items() if k != "mode"})  # the eager backend takes no mode

    monkeypatch.setattr(torch, "compile", recording)
    code = main(["--training.steps", "1", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
                 "--compile.enable", "--compile.backend", "eager", "--compile.mode", "max-autotune-no-cudagraphs",
                 "--job.dump_folder", str(tmp_path)])
    assert code == 0
    # llama3_debug: 6 blocks and the loss
    assert seen.count("max-autotune-no-cudagraphs") == 7, seen
