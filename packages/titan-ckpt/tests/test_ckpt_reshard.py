"""Save under one layout, load under another: FSDP on 2 ranks -> 1 process, -> TP 2, -> PP 2.

Uses torch's fully_shard / parallelize_module directly on a toy model (the layouts, not Titan's
appliers, are what is under test). Model and optimizer state must come back bit-identical, and
training continued after a reshard must match the run that saved.
"""

import pytest
import torch
import torch.distributed as dist
from ckpt_testlib import (
    CountingLoader,
    HeadPermuteAdapter,
    assert_same,
    full_states,
    make_model,
    make_optimizer,
    pipeline_part,
    train_step,
)
from titan_ckpt import CheckpointManager, ModelState, OptimizerState, create_seed_checkpoint
from titan_ckpt.hf import export_hf, load_hf_weights
from titan_mesh.testing import DistributedPool


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(world_size=2) as p:
        yield p


def _fsdp(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    for block in model.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _tp(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (2,))
    for block in model.layers.values():
        parallelize_module(block.attention, mesh, {"wq": ColwiseParallel(), "wo": RowwiseParallel()})
    parallelize_module(model, mesh, {"output": ColwiseParallel()})
    return model


def _states(model, opt, rank=0):
    return {"model": ModelState(model), "optimizer": OptimizerState(model, opt),
            "dataloader": CountingLoader(rank), "train_state": {"step": 0}}


def _save_fsdp(folder, opt_kind, async_mode):
    """Train 2 steps under FSDP(2), save, train a 3rd; return the saved state and the 3rd loss."""
    if async_mode == "async_with_pinned_mem":
        # Pool ranks are daemonic, and daemonic processes may not start DCP's writer process;
        # a training rank started by torchrun is not daemonic, so let this one act like it.
        import multiprocessing

        multiprocessing.current_process()._config["daemon"] = False
    model = _fsdp(make_model())
    opt = make_optimizer(model, opt_kind)
    states = _states(model, opt, dist.get_rank())
    for step in (1, 2):
        train_step(model, opt, step)
    states["dataloader"].position = 10 + dist.get_rank()
    states["train_state"]["step"] = 2
    mgr = CheckpointManager(folder, interval=2, async_mode=async_mode)
    mgr.save(2, states)
    mgr.wait_for_staging()
    saved = full_states(model, opt)
    loss3 = train_step(model, opt, 3)
    mgr.close()
    return saved, loss3


def _load(folder, layout, opt_kind):
    rank = dist.get_rank()
    model = make_model(seed=5)
    if layout == "tp":
        model = _tp(model)
    elif layout == "pp":
        model = pipeline_part(model, rank)
    opt = make_optimizer(model, opt_kind)
    states = _states(model, opt, rank)
    with CheckpointManager(folder, interval=1) as mgr:
        step = mgr.load(states)
    model_sd, opt_sd = full_states(model, opt)
    return step, model_sd, opt_sd, states["dataloader"].position, states["train_state"]


@pytest.mark.parametrize("opt_kind,async_mode", [("adamw", "disabled"), ("sgd", "async"),
                                                 ("adamw", "async_with_pinned_mem")])
def test_fsdp2_checkpoint_reshards_to_one_process_tp2_and_pp2(pool, tmp_path, opt_kind, async_mode):
    folder = str(tmp_path)
    (saved_model, saved_opt), loss3 = pool.run(_save_fsdp, folder, opt_kind, async_mode)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]

    # -> one process, no process group: identical state, and step 3 gives the FSDP run's loss.
    model = make_model(seed=5)
    opt = make_optimizer(model, opt_kind)
    states = _states(model, opt)
    assert CheckpointManager(folder, interval=1).load(states) == 2
    assert_same(full_states(model, opt)[0], saved_model, "1 process model")
    assert_same(full_states(model, opt)[1], saved_opt, "1 process optimizer")
    assert states["dataloader"].position == 10 and states["train_state"] == {"step": 2}
    assert train_step(model, opt, 3) == pytest.approx(loss3, rel=1e-5)

    if async_mode != "disabled":
        return  # the layouts below read the same files whatever wrote them
    for layout in ("tp", "pp"):
        results = pool.run(_load, folder, layout, opt_kind)
        for rank, (step, model_sd, opt_sd, position, train) in enumerate(results):
            assert step == 2 and position == 10 + rank and train == {"step": 2}
            if layout == "tp":
                assert_same(model_sd, saved_model, "tp model")
                assert_same(opt_sd, saved_opt, "tp optimizer")
        if layout == "pp":  # each stage holds its own half; together they are the whole
            merged_model = {**results[0][1], **results[1][1]}
            merged_opt = {**results[0][2], **results[1][2]}
            assert not set(results[0][1]) & set(results[1][1])
            assert_same(merged_model, saved_model, "pp model")
            assert_same(merged_opt, saved_opt, "pp optimizer")


def _load_seed_into_fsdp(folder):
    model = _fsdp(make_model(seed=9))
    opt = make_optimizer(model, "adamw")
    with CheckpointManager(folder, interval=1) as mgr:
        assert mgr.load({"model": ModelState(model), "optimizer": OptimizerState(model, opt)}) == 0
    return full_states(model, opt)[0]


def test_seed_checkpoint_from_one_process_loads_into_fsdp(pool, tmp_path):
    seed = make_model(seed=3)
    create_seed_checkpoint(tmp_path, seed)
    expected = {k: v.detach() for k, v in seed.state_dict().items()}
    for got in pool.run(_load_seed_into_fsdp, str(tmp_path)):
        assert_same(got, expected, "seed in FSDP")


def _hf_export_from_fsdp(folder, shard_bytes):
    model = _fsdp(make_model(seed=4))
    export_hf(folder, model, HeadPermuteAdapter(), torch.float32, max_shard_bytes=shard_bytes)
    return full_states(model, make_optimizer(model, "sgd"))[0]


def _hf_load_into(folder, layout):
    model = make_model(seed=8)
    model = _tp(model) if layout == "tp" else pipeline_part(model, dist.get_rank())
    load_hf_weights(folder, model, HeadPermuteAdapter())
    return full_states(model, make_optimizer(model, "sgd"))[0]


def test_hf_export_from_fsdp_and_load_into_tp_and_pp(pool, tmp_path):
    sharded = tmp_path / "sharded"
    expected = pool.run(_hf_export_from_fsdp, str(sharded), 1500)[0]
    assert (sharded / "model.safetensors.index.json").is_file() and (sharded / "config.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    assert not list(tmp_path.glob("*.partial"))
    model = make_model(seed=1)
    load_hf_weights(sharded, model, HeadPermuteAdapter())
    assert_same({k: v.detach() for k, v in model.state_dict().items()}, expected, "1 process")
    tp = pool.run(_hf_load_into, str(sharded), "tp")
    assert_same(tp[0], expected, "tp")
    pp = pool.run(_hf_load_into, str(sharded), "pp")
    assert_same({**pp[0], **pp[1]}, expected, "pp")


def _tiny(family: str):
    from titan_models import get_model_spec
    from titan_models.testing import tiny_args

    spec = get_model_spec(family)
    args = tiny_args(family)
    torch.manual_seed(0)
    model = spec.build(args)
    model.init_weights()
    return model, spec.state_dict_adapter(args)


def _hf_round_trip_under_fsdp(out, family):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, adapter = _tiny(family)
    mesh = init_device_mesh("cpu", (2,))
    for block in model.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    export_hf(out, model, adapter, torch.float32)
    fresh, _ = _tiny(family)
    for p in fresh.parameters():
        p.data.zero_()
    for block in fresh.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(fresh, mesh=mesh)
    load_hf_weights(out, fresh, adapter)
    return full_states(fresh, make_optimizer(fresh, "sgd"))[0]


@pytest.mark.parametrize("family", ["llama3", "qwen3", "deepseek_v3"])
def test_family_adapters_export_and_load_fsdp_shards(pool, tmp_path, family):
    from safetensors.torch import load_file

    got = pool.run(_hf_round_trip_under_fsdp, str(tmp_path / "fsdp"), family)
    model, adapter = _tiny(family)
    export_hf(tmp_path / "one", model, adapter, torch.float32)
    a, b = load_file(tmp_path / "fsdp/model.safetensors"), load_file(tmp_path / "one/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    expected = {k: v.detach() for k, v in model.state_dict().items()}
    assert_same(got[0], expected, f"{family} via HF under FSDP")
