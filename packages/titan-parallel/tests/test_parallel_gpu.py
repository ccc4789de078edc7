"""On CUDA (skipped without GPUs): real float8 matmuls, and on 2 GPUs over NCCL the parity of
FSDP, TP + SP + loss parallel, and async TP (compiled, symmetric-memory micro-pipelining)."""

import pytest
import torch
import torch.distributed as dist
from parallel_toy_models import (
    batch,
    compare_training,
    loss_fn,
    meta_model,
    reference_model,
    tp_plan,
)
from titan_mesh.testing import DistributedPool, requires_gpus
from titan_parallel import (
    apply_compile,
    apply_float8,
    apply_fsdp,
    apply_tp,
    float8_linear_names,
    init_weights,
)
from torch.distributed.device_mesh import init_device_mesh

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@requires_gpus(1)
def test_float8_on_the_gpu_runs_scaled_matmuls_within_tolerance():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs float8 tensor cores (sm89+)")
    pytest.importorskip("torchao.float8")
    ref = reference_model("cuda", dim=256, hidden=512, vocab=512)
    model = reference_model("cuda", dim=256, hidden=512, vocab=512)
    apply_float8(model, skip=["output"], skip_small=False)
    assert len(float8_linear_names(model)) == 14
    apply_compile(model)
    x, y = (t.to("cuda") for t in batch(0, vocab=512))
    loss, ref_loss = loss_fn(model(x), y), loss_fn(ref(x), y)
    loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 2e-2 * ref_loss.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.fixture(scope="module")
def nccl_pool():
    with DistributedPool(2, backend="nccl") as p:
        yield p


def _parity(layout, optimizer):
    torch.backends.cuda.matmul.allow_tf32 = False
    mesh = init_device_mesh("cuda", (2,), mesh_dim_names=("x",))
    model = meta_model()
    rank, size, lp = dist.get_rank(), 2, False
    if layout == "fsdp":
        apply_fsdp(model, mesh)
    else:
        apply_tp(model, mesh, tp_plan(), async_tp=layout == "async_tp")
        rank, size, lp = 0, 1, True
        if layout == "async_tp":
            apply_compile(model)
    init_weights(model, device="cuda")
    return compare_training(model, reference_model("cuda"), optimizer=optimizer, dp_rank=rank,
                            dp_size=size, loss_parallel=lp, device="cuda")


@requires_gpus(2)
@pytest.mark.parametrize("layout,optimizer", [("fsdp", "adamw"), ("fsdp", "sgd"), ("tp", "adamw"),
                                              ("tp", "sgd"), ("async_tp", "adamw")])
def test_nccl_parity_with_one_process(nccl_pool, layout, optimizer):
    for r in nccl_pool.run(_parity, layout, optimizer):
        assert r["same_init"] and r["loss"] < 1e-5 and r["grad"] < 1e-4 and r["param"] < 1e-4, r
