"""model.sdpa_kernels 'fa4' (FlashAttention-4): refused by key, before any work, wherever it cannot
run here (the kernel's own numerics: titan-models' GPU tests)."""

import pytest
from titan_train.config import build_config
from titan_train.errors import ConfigError
from titan_train.plan import make_plan


def _plan(*args, device="cuda", world=1):
    return make_plan(build_config(["--model.sdpa_kernels", "fa4", *args]), world_size=world, device_type=device,
                     vocab_size=2048)


@pytest.mark.parametrize("args, kw, match", [
    ((), dict(device="cpu"), "needs CUDA GPUs of compute capability 9.x or 10.x (FlashAttention-4); this run is on cpu"),
    (("--model.attn_backend", "flex"), {}, "with model.attn_backend = 'flex'"),
    (("--model.attn_mask", "block_causal"), {}, "with model.attn_mask = 'block_causal'"),
    (("--parallelism.context_parallel_degree", "2", "--parallelism.context_parallel_method", "ulysses"),
     dict(world=2), "context_parallel_degree = 2"),
])
def test_fa4_is_refused_by_key(args, kw, match):
    with pytest.raises(ConfigError, match=r"model.sdpa_kernels = \['fa4'\]") as e:
        _plan(*args, **kw)
    assert match in str(e.value), str(e.value)


def test_fa4_on_a_machine_without_it_names_what_is_missing():
    """The plan takes a 'cuda' layout anywhere (the memory estimator plans GPU runs on laptops); the
    trainer then checks this machine, and the reason comes from titan_models.fa4_problem."""
    import titan_models
    from titan_train.memory import estimate
    from titan_train.plan_checks import check_fa4_here

    problem = titan_models.fa4_problem()
    if problem is None:
        pytest.skip("FlashAttention-4 can run here")
    cfg = build_config(["--config", "bench_1b", "--training.local_batch_size", "6", "--model.sdpa_kernels", "fa4"])
    assert _plan().parallel is not None
    plain = build_config(["--config", "bench_1b", "--training.local_batch_size", "6"])
    assert estimate(cfg, 1).peak_allocated == pytest.approx(estimate(plain, 1).peak_allocated)
    with pytest.raises(ConfigError, match="'fa4' cannot run here") as e:
        check_fa4_here(cfg)
    assert problem in str(e.value)
    check_fa4_here(plain)   # nothing asked of the machine without 'fa4'
