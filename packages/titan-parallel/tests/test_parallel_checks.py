"""Finding units and plan targets by name, and the errors for impossible requests, raised before
anything is sharded (meshes on a fake 4- or 8-rank world; no communication)."""

import pytest
import torch
from parallel_toy_models import meta_model, reference_model, tp_plan
from titan_mesh.testing import fake_world
from titan_parallel import (
    ACOptions,
    Float8Options,
    FSDPOptions,
    ParallelConfigError,
    apply_ac,
    apply_ddp,
    apply_fsdp,
    apply_tp,
    check_tp_degree,
    find_repeated_blocks,
    init_weights,
    parallelize,
    resolve_units,
)
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel


@pytest.fixture(scope="module")
def world4():
    """A (dp=4, tp=2) mesh over a fake 8-rank world (the module's only process group)."""
    with fake_world(8):
        yield init_device_mesh("cpu", (4, 2), mesh_dim_names=("dp", "tp"))


class Towers(nn.Module):
    """Two ModuleDicts of repeated blocks: the larger one (by parameters) holds the units."""

    def __init__(self):
        super().__init__()
        self.small = nn.ModuleDict({str(i): nn.Linear(4, 4) for i in range(5)})
        self.big = nn.ModuleDict({"a": nn.Linear(64, 64), "b": nn.Linear(64, 64)})
        self.mixed = nn.ModuleList([nn.Linear(256, 256), nn.ReLU()])


def test_units_are_found_named_and_survive_wrappers():
    assert [n for n, _ in find_repeated_blocks(Towers())] == ["big.a", "big.b"]
    model = meta_model(n_layers=3)
    assert [n for n, _ in find_repeated_blocks(model)] == ["layers.0", "layers.1", "layers.2"]
    assert [n for n, _ in resolve_units(model, "layers")] == ["layers.0", "layers.1", "layers.2"]
    assert [n for n, _ in resolve_units(model, ["layers.*.feed_forward", model.norm])] == [
        "layers.0.feed_forward", "layers.1.feed_forward", "layers.2.feed_forward", "norm"]
    block = model.layers[1]
    apply_ac(model, mode="full")
    # Patterns and the original block objects still find the (now wrapped) blocks.
    [(name, wrapper)] = resolve_units(model, [block])
    assert name == "layers.1" and wrapper is model.layers[1] and wrapper is not block
    assert [n for n, _ in resolve_units(model, "layers.*.attention.w[qk]")] == [
        f"layers.{i}.attention.{w}" for i in range(3) for w in ("wq", "wk")]


def test_unit_errors_name_the_pattern_and_the_closest_module():
    with pytest.raises(ParallelConfigError, match="no nn.ModuleList/nn.ModuleDict of repeated blocks"):
        find_repeated_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ParallelConfigError, match=r"units: 'layers\.\*\.feedforward' matches no submodule.*closest: 'layers\.\*\.feed_forward'"):
        resolve_units(meta_model(), ["layers.*.feedforward"])
    with pytest.raises(ParallelConfigError, match="not a submodule"):
        resolve_units(meta_model(), [nn.Linear(2, 2)])


def test_check_tp_degree_names_both_numbers():
    check_tp_degree(4, n_heads=32, n_kv_heads=8, ffn_hidden=14336)
    with pytest.raises(ParallelConfigError, match="tensor parallel degree 16 does not divide n_kv_heads=8"):
        check_tp_degree(16, n_heads=32, n_kv_heads=8)


def test_tp_plan_errors_before_sharding(world4):
    tp4 = init_device_mesh("cpu", (2, 4), mesh_dim_names=("dp", "tp"))["tp"]
    model = meta_model()  # n_heads=4, n_kv_heads=2
    with pytest.raises(ParallelConfigError, match=r"degree 4 does not divide layers\.0\.attention\.n_kv_heads=2"):
        apply_tp(model, tp4, tp_plan())
    assert not any(isinstance(p, DTensor) for p in model.parameters())
    with pytest.raises(ParallelConfigError, match=r"degree 4 does not divide layers\.0\.feed_forward\.w1\.out_features=122"):
        apply_tp(meta_model(hidden=122, n_kv_heads=4), tp4, tp_plan())


@pytest.mark.parametrize("plan,match", [
    ({"layers.*.atention.wq": ColwiseParallel()}, r"plan\['layers\.\*\.atention\.wq'\]: .* matches no submodule.*closest"),
    ({"layers.*.attention.wq": ColwiseParallel(), "layers.0.attention.wq": ColwiseParallel()},
     "'layers.0.attention.wq' is matched by both"),
    ({"output": "colwise"}, r"plan\['output'\] must be a torch ParallelStyle"),
    ({}, "non-empty dict"),
])
def test_tp_plan_must_name_real_modules_once(world4, plan, match):
    with pytest.raises(ParallelConfigError, match=match):
        apply_tp(meta_model(), world4["tp"], plan)


def test_mesh_and_layout_errors(world4):
    model = meta_model()
    with pytest.raises(ParallelConfigError, match="must be a 1-D DeviceMesh"):
        apply_tp(model, world4, tp_plan())
    with pytest.raises(ParallelConfigError, match="async_tp=True needs CUDA GPUs.*'cpu'"):
        apply_tp(model, world4["tp"], tp_plan(), async_tp=True)
    with pytest.raises(ParallelConfigError, match="reshard_after_forward='sometimes'"):
        apply_fsdp(model, world4["dp"], reshard_after_forward="sometimes")
    with pytest.raises(ParallelConfigError, match="cpu_offload=True .* already on the CPU"):
        apply_fsdp(model, world4["dp"], cpu_offload=True)
    with pytest.raises(ParallelConfigError, match="param_dtype='bfloat' .*closest: 'bfloat16'"):
        apply_fsdp(model, world4["dp"], param_dtype="bfloat")
    with pytest.raises(ParallelConfigError, match=r"mesh must be 1-D \(shard\); got a 2-D mesh"):
        apply_ddp(model, world4)
    assert not any(isinstance(p, DTensor) for p in model.parameters())
    apply_tp(model, world4["tp"], tp_plan())
    with pytest.raises(ParallelConfigError, match="overlaps the mesh of parameter"):
        apply_fsdp(model, world4["tp"])
    with pytest.raises(ParallelConfigError, match="does not compose with tensor parallelism"):
        apply_ddp(model, world4["dp"])


def test_fsdp_mesh_must_be_one_or_two_dims(world4):
    mesh = init_device_mesh("cpu", (2, 2, 2), mesh_dim_names=("a", "b", "c"))
    with pytest.raises(ParallelConfigError, match=r"1-D \(shard\) or 2-D \(replicate, shard\); got a 3-D mesh"):
        apply_fsdp(meta_model(), mesh)


def test_parallelize_checks_everything_before_touching_the_model(world4):
    model = meta_model()
    before = {n: type(m) for n, m in model.named_modules()}
    requests = [
        (dict(float8=Float8Options(emulate=True, skip_small=False), tp_mesh=world4["tp"],
              tp_plan={**tp_plan(), "layers.*.attention.wz": ColwiseParallel()}), "matches no submodule"),
        (dict(tp_mesh=world4["tp"]), "needs both tp_mesh and tp_plan"),
        (dict(tp_mesh=world4["tp"], tp_plan=tp_plan(), async_tp=True), "async_tp=True needs .* compile"),
        (dict(ac=ACOptions(mode="selective", layer_freq=-1)), "layer_freq=-1"),
        (dict(tp_mesh=world4["tp"], tp_plan=tp_plan(), dp_mesh=world4["dp"], dp="ddp"),
         "dp='ddp' does not compose with tensor parallel"),
        (dict(tp_mesh=world4["tp"], tp_plan=tp_plan(), dp_mesh=world4["tp"]), "overlap"),
        (dict(dp_mesh=world4["dp"], dp="zero3"), "dp='zero3'"),
        (dict(float8=Float8Options(emulate=True, fsdp_float8_all_gather=True)), "needs FSDP"),
        (dict(dp_mesh=world4["dp"], dp="ddp", fsdp=FSDPOptions(param_dtype=torch.bfloat16)),
         "has no effect with dp='ddp'"),
    ]
    for kwargs, match in requests:
        with pytest.raises(ParallelConfigError, match=match):
            parallelize(model, **kwargs)
    assert {n: type(m) for n, m in model.named_modules()} == before


def test_init_weights_errors():
    with pytest.raises(ParallelConfigError, match="still has meta tensors; pass device="):
        init_weights(meta_model())
    with pytest.raises(ParallelConfigError, match="has no init_weights\\(\\) method; pass init_fn="):
        init_weights(nn.Linear(2, 2))
    seen = []
    init_weights(nn.Linear(2, 2), lambda m: seen.append(torch.is_grad_enabled()))
    assert seen == [False]
    model = init_weights(meta_model(), device="cpu")
    ref = reference_model()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
