"""optimizer.fused_casts: the plan takes it only where the one-GPU casts run (and refuses it by key
elsewhere); the step measures and clips the gradients the persistent bf16 copies hold, and
steps like the casts with torch's AdamW clipping the float32 gradients."""

import contextlib
import copy
import math

import pytest
import torch
from titan_parallel import apply_mixed_precision, clip_grad_norm_, compute_copies
from titan_train.config import build_config
from titan_train.errors import ConfigError
from titan_train.plan import make_plan
from titan_train.trainer.optim import OptimizerSettings, build_optimizer
from titan_train.trainer.step import StepRunner


def _plan(*args, device="cuda", world=1):
    return make_plan(build_config(["--optimizer.fused_casts", *args]), world_size=world, device_type=device,
                     vocab_size=2048)


def test_the_plan_takes_it_on_one_gpu_with_the_casts_only():
    assert _plan().parallel.persistent_casts
    assert not make_plan(build_config([]), world_size=1, device_type="cuda", vocab_size=2048).parallel.persistent_casts
    for args, kw, match in ((), dict(device="cpu"), "trains in float32"),\
            (("--parallelism.single_gpu_fsdp",), {}, "FSDP's casts"),\
            ((), dict(world=2), "FSDP's casts"),\
            (("--optimizer.name", "SGD"), {}, "optimizer.name = 'SGD'"),\
            (("--training.global_batch_size", "16", "--training.local_batch_size", "8"), {}, "2 micro-batches"):
        with pytest.raises(ConfigError, match="optimizer.fused_casts") as e:
            _plan(*args, **kw)
        assert match in str(e.value), (args, str(e.value))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def _runner(model, opt):
    return StepRunner(parts=[model], optimizers=[opt], schedulers=[], device=torch.device("cpu"), accum_steps=1,
                      max_norm=0.5, loss_fn=lambda out, y: torch.nn.functional.mse_loss(out.float(), y),
                      clip_fn=lambda params, max_norm: clip_grad_norm_(params, max_norm),
                      train_context=lambda batch: contextlib.nullcontext())


def test_steps_clip_the_copies_gradients_like_the_casts_clip_float32_ones():
    settings = OptimizerSettings(lr=1e-2, implementation="foreach")
    base = _model()
    casts = apply_mixed_precision(copy.deepcopy(base), units=["0", "2"])
    fused = apply_mixed_precision(copy.deepcopy(base), units=["0", "2"], persistent=True)
    want_runner = _runner(casts, build_optimizer(casts, settings))
    fused_opt = build_optimizer(fused, settings)
    assert type(fused_opt).__name__ == "MasterAdamW"
    runner = _runner(fused, fused_opt)
    assert runner.clip_in_optimizer and not want_runner.clip_in_optimizer
    torch.manual_seed(1)
    data = [(torch.randn(8, 16) * 10, torch.randn(8, 4)) for _ in range(4)]
    clipped = 0
    for i, (x, y) in enumerate(data):
        want = want_runner.run(iter([(x, y)]))
        got = runner.run(iter([(x, y)]))
        clipped += want.grad_norm.item() > 0.5
        if i == 0:  # the same weights: the same loss and gradients (the bf16 ones widen exactly)
            assert got.loss.item() == want.loss.item()
            # the norm up to float32 summation order (the kernel reads bf16 there)
            assert math.isclose(got.grad_norm.item(), want.grad_norm.item(), rel_tol=1e-6)
        assert math.isclose(got.loss.item(), want.loss.item(), rel_tol=1e-3)
        assert math.isclose(got.grad_norm.item(), want.grad_norm.item(), rel_tol=1e-2)
        assert not hasattr(fused_opt, "grad_scale")
    assert clipped >= 2  # the clip was exercised
    for p, q in zip(fused.parameters(), casts.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-3)
    copies = compute_copies(fused)
    assert all(p.grad is None and copies.copy_of(p).grad is not None for p in fused.parameters())
