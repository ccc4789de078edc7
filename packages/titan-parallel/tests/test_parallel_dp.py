"""FSDP (4 and 2 ranks, each reshard setting), HSDP 2x2, DDP, bf16 mixed precision and float8
all-gather on 4 gloo ranks, each against one process with the same seed and data."""

import pytest
import torch
import torch.distributed as dist
from parallel_toy_models import compare_training, meta_model, reference_model
from titan_mesh.testing import DistributedPool
from titan_parallel import (
    ACOptions,
    CompileOptions,
    apply_ddp,
    apply_float8,
    apply_fsdp,
    init_weights,
    parallelize,
    precompute_float8_scales,
)
from torch.distributed.device_mesh import init_device_mesh

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(world_size=4) as p:
        yield p


def _fsdp(layout, optimizer, reshard, param_dtype=None):
    if layout == "fsdp4":
        mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("dp_shard",))
        dp_rank, dp_size = dist.get_rank(), 4
    else:  # 2 x 2: "hsdp" shards over the inner dim and replicates over the outer one
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp_replicate", "dp_shard"))
        if layout == "hsdp":
            dp_rank, dp_size = dist.get_rank(), 4
        else:  # "fsdp2": two independent 2-rank FSDP groups fed the same rows
            mesh, dp_rank, dp_size = mesh["dp_shard"], mesh["dp_shard"].get_local_rank(), 2
    model = meta_model()
    apply_fsdp(model, mesh, reshard_after_forward=reshard, param_dtype=param_dtype,
               reduce_dtype=torch.float32 if param_dtype else None)
    init_weights(model, device="cpu")
    sharded = all(p.to_local().numel() < p.numel() for p in model.parameters() if p.dim() == 2)
    result = compare_training(model, reference_model(), optimizer=optimizer, dp_rank=dp_rank, dp_size=dp_size)
    return {**result, "sharded": sharded}


@pytest.mark.parametrize("layout,optimizer,reshard", [
    ("fsdp4", "adamw", "default"), ("fsdp4", "sgd", 2), ("fsdp2", "sgd", "always"),
    ("fsdp2", "adamw", "never"), ("hsdp", "adamw", "default"), ("hsdp", "sgd", True),
])
def test_fsdp_and_hsdp_match_one_process(pool, layout, optimizer, reshard):
    for r in pool.run(_fsdp, layout, optimizer, reshard):
        assert r["same_init"] and r["sharded"]
        assert r["loss"] < 1e-6 and r["grad"] < 1e-5 and r["param"] < 1e-5, r


def test_fsdp_bf16_mixed_precision_within_bf16_tolerance(pool):
    # bf16 keeps ~3 significant digits: compare with the fp32 run loosely, and check it is not fp32.
    for r in pool.run(_fsdp, "fsdp4", "sgd", "default", "bfloat16"):
        assert r["same_init"]
        assert r["loss"] < 1e-2 and r["grad"] < 0.1 and r["param"] < 1e-2, r
        assert r["grad"] > 1e-4, "bf16 compute should differ from fp32"


def _composed(dp):
    # The documented order through parallelize: AC (per-op) -> compile -> FSDP or DDP, on the meta
    # model, then init. Dynamo's "eager" backend captures the same full graphs as inductor at a
    # fraction of the CPU time.
    mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("dp",))
    model = parallelize(meta_model(), ac=ACOptions(mode="selective"), compile=CompileOptions(backend="eager"),
                        dp_mesh=mesh, dp=dp)
    init_weights(model, device="cpu")  # DDP broadcasts rank 0's weights at the first forward
    kinds = sorted({type(b).__name__ for b in model.layers})
    result = compare_training(model, reference_model(), optimizer="adamw", dp_rank=dist.get_rank(), dp_size=4)
    return {**result, "kinds": kinds}


@pytest.mark.parametrize("dp", ["fsdp", "ddp"])
def test_ac_and_compile_compose_with_data_parallel(pool, dp):
    for r in pool.run(_composed, dp):
        assert r["kinds"] == (["FSDPOptimizedModule"] if dp == "fsdp" else ["OptimizedModule"])
        assert r["same_init"] and r["loss"] < 1e-6 and r["grad"] < 1e-5 and r["param"] < 1e-5, r


def _ddp(optimizer):
    mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("dp_replicate",))
    model = init_weights(meta_model(), device="cpu")
    apply_ddp(model, mesh)
    return compare_training(model, reference_model(), optimizer=optimizer,
                            dp_rank=dist.get_rank(), dp_size=4)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_ddp_matches_one_process(pool, optimizer):
    for r in pool.run(_ddp, optimizer):
        assert r["same_init"] and r["loss"] < 1e-6 and r["grad"] < 1e-5 and r["param"] < 1e-5, r


def _float8_fsdp():
    # Every rank trains on the whole batch, so float8's dynamic activation scales (amax over the
    # local rows) equal one process's; only the float8 weight all-gather and the precomputed
    # scales differ from the single-process float8 run, and they must not change the numbers.
    mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("dp_shard",))
    f8 = dict(skip=["output"], skip_small=False, emulate=True)
    model = apply_float8(meta_model(), **f8, fsdp_float8_all_gather=True, precompute_scale=True)
    apply_fsdp(model, mesh)
    init_weights(model, device="cpu")
    wq = model.layers[0].attention.wq.weight
    ref = apply_float8(reference_model(), **f8)
    result = compare_training(model, ref, optimizer="adamw", after_step=precompute_float8_scales)
    fp32 = compare_training(reference_model(), reference_model(), optimizer="sgd", steps=1)
    return {**result, "local": type(wq.to_local()).__name__, "output": type(model.output).__name__,
            "vs_fp32": abs(result["losses"][0][0] - fp32["losses"][0][1]) / fp32["losses"][0][1]}


def test_float8_fsdp_all_gather_matches_one_float8_process(pool):
    for r in pool.run(_float8_fsdp):
        assert r["local"] == "WeightWithDynamicFloat8CastTensor" and r["output"] == "Linear"
        assert r["same_init"] and r["loss"] < 1e-5 and r["grad"] < 1e-4 and r["param"] < 1e-4, r
        assert 1e-5 < r["vs_fp32"] < 1e-2, r  # float8 really ran, within its tolerance
