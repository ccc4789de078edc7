"""Expert parallel on 4 gloo ranks, on a small MoE written in the test (parallel_toy_models), each
layout against one process on the same seed and data: loss, every gradient (experts included)
and the parameters after SGD and AdamW steps. Also: uneven and empty expert groups, activation
checkpointing (the all-to-alls are not sent again under selective AC), the clipping norm over the
dense and expert meshes, and the checks that refuse what cannot work."""

import pytest
import torch
import torch.distributed as dist
from parallel_toy_models import compare_training, meta_model, reference_model, tp_plan
from titan_mesh import ParallelDims
from titan_mesh.testing import DistributedPool
from titan_parallel import (
    ACOptions,
    ParallelConfigError,
    clip_grad_norm_,
    init_weights,
    parallelize,
)
from torch.distributed.tensor import DTensor

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MOE = dict(n_experts=8, top_k=2)
LAYOUTS = {  # name: ParallelDims degrees on 4 ranks
    "ep4": dict(dp_shard=4, ep=4),                    # every rank 2 experts, no expert FSDP
    "fsdp2xep2": dict(dp_shard=4, ep=2),              # experts FSDP-sharded over 2, EP over 2
    "tp2xep2": dict(dp_shard=2, tp=2, ep=2),          # EP borrows the TP ranks
    "tp2_experts_fsdp": dict(dp_shard=2, tp=2),       # no EP: experts FSDP over dp_shard x tp
    "hsdp_ep2": dict(dp_replicate=2, dp_shard=2, ep=2),
    "tp2xep4": dict(dp_shard=2, tp=2, ep=4),          # EP borrows TP and FSDP ranks
}


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(world_size=4) as p:
        yield p


def _parallel_moe(degrees, *, closed=(), ac=None):
    dims = ParallelDims(world_size=4, **degrees)
    dims.build_mesh("cpu", experts=True)
    model = meta_model(closed=closed, **MOE)
    tp = dims.get_mesh("tp")
    parallelize(model, units="layers.*", tp_mesh=tp, tp_plan=tp_plan(loss_parallel=False, moe=True) if tp else None,
                ep_mesh=dims.get_mesh("ep") if dims.ep > 1 else None, expert_dp_mesh=dims.expert_fsdp_mesh(),
                ac=ac, dp_mesh=dims.fsdp_mesh())
    init_weights(model, device="cpu")
    dp_rank = dims.get_mesh("dp").get_local_rank() if dims.get_mesh("dp") is not None else 0
    return dims, model, dp_rank


def _layout(name, optimizer, closed=()):
    degrees = LAYOUTS[name]
    dims, model, dp_rank = _parallel_moe(degrees, closed=closed)
    w1 = model.layers[0].moe.experts.w1
    local_experts = w1.to_local().shape[0] if dims.ep > 1 else None
    res = compare_training(model, reference_model(closed=closed, **MOE), optimizer=optimizer, dp_rank=dp_rank,
                           dp_size=dims.dp_degree)
    dims.destroy_groups()
    return {**res, "local_experts": local_experts, "ep": dims.ep}


@pytest.mark.parametrize("name,optimizer", [
    ("ep4", "sgd"), ("fsdp2xep2", "sgd"), ("fsdp2xep2", "adamw"), ("tp2xep2", "sgd"), ("tp2_experts_fsdp", "sgd"),
    ("hsdp_ep2", "sgd"), ("tp2xep4", "adamw"),
])
def test_expert_layouts_match_one_process(pool, name, optimizer):
    # SGD carries any wrong gradient scale straight into the parameters: the strict check. AdamW
    # normalizes it away but turns float32 summation-order noise (1e-7) into ~1e-5 parameter steps.
    tol = 1e-5 if optimizer == "sgd" else 1e-4
    for r in pool.run(_layout, name, optimizer):
        assert r["same_init"]
        if r["ep"] > 1:
            assert r["local_experts"] == 8 // r["ep"]
        assert r["loss"] < 1e-5 and r["grad"] < tol and r["param"] < tol, r


def test_empty_expert_groups_match_one_process(pool):
    """Experts 6 and 7 never chosen: under EP 4 rank 3 receives no rows at all."""
    for r in pool.run(_layout, "ep4", "sgd", (6, 7)):
        assert r["loss"] < 1e-5 and r["grad"] < 1e-5 and r["param"] < 1e-5, r


def _count_all_to_all(mode):
    from torch.utils._python_dispatch import TorchDispatchMode

    dims, model, dp_rank = _parallel_moe(LAYOUTS["fsdp2xep2"], ac=ACOptions(mode=mode) if mode else None)

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "all_to_all" in str(func):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    x = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(dp_rank))
    with Count():
        model(x).sum().backward()
    ref = reference_model(**MOE)
    grads = [p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad for p in model.parameters()]
    dims.destroy_groups()
    return Count.n, all(torch.isfinite(g).all() for g in grads), ref is not None


def test_activation_checkpointing_and_the_all_to_alls(pool):
    """Per MoE layer and forward: one counts and one token all-to-all, plus the return trip (3).
    Full AC re-runs the forward in backward (sends again); selective AC keeps their outputs."""
    plain = pool.run(_count_all_to_all, None)[0]
    full = pool.run(_count_all_to_all, "full")[0]
    selective = pool.run(_count_all_to_all, "selective")[0]
    assert plain[1] and full[1] and selective[1]
    assert full[0] > plain[0]
    assert selective[0] == plain[0], (plain, selective)


def _clip_norm(name):
    dims, model, dp_rank = _parallel_moe(LAYOUTS[name])
    ref = reference_model(**MOE)
    from parallel_toy_models import batch, loss_fn

    x, y = batch(0)
    rows = slice(dp_rank * 4 // dims.dp_degree, (dp_rank + 1) * 4 // dims.dp_degree)
    loss_fn(model(x[rows]), y[rows]).backward()
    loss_fn(ref(x), y).backward()
    norm = clip_grad_norm_(list(model.parameters()), 1e9)
    ref_norm = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 1e9)
    dims.destroy_groups()
    return norm.item(), ref_norm.item()


@pytest.mark.parametrize("name", ["fsdp2xep2", "tp2xep4"])
def test_clip_norm_over_dense_and_expert_meshes(pool, name):
    for norm, ref in pool.run(_clip_norm, name):
        assert norm == pytest.approx(ref, rel=1e-5)


def _checks():
    out = {}
    dims = ParallelDims(world_size=4, dp_shard=4, ep=4)
    dims.build_mesh("cpu", experts=True)
    for key, kwargs in {
        "indivisible": dict(model=meta_model(n_experts=6, top_k=2), ep_mesh=dims.get_mesh("ep"),
                            expert_dp_mesh=dims.expert_fsdp_mesh(), dp_mesh=dims.fsdp_mesh()),
        "no_expert_mesh": dict(model=meta_model(**MOE), ep_mesh=dims.get_mesh("ep"), dp_mesh=dims.fsdp_mesh()),
        "ddp": dict(model=meta_model(**MOE), ep_mesh=dims.get_mesh("ep"), expert_dp_mesh=dims.expert_fsdp_mesh(),
                    dp_mesh=dims.get_mesh("dp_shard"), dp="ddp"),
        "dense": dict(model=meta_model(), ep_mesh=dims.get_mesh("ep"), expert_dp_mesh=dims.expert_fsdp_mesh()),
    }.items():
        model = kwargs.pop("model")
        try:
            parallelize(model, units="layers.*", **kwargs)
            out[key] = "no error"
        except ParallelConfigError as e:
            out[key] = str(e)
    dims.destroy_groups()
    return out


def test_impossible_expert_layouts_are_refused_before_any_work(pool):
    out = pool.run(_checks)[0]
    assert "expert parallel degree 4 does not divide layers.0.moe.experts.n_experts=6" in out["indivisible"]
    assert "degrees that divide 6: 1, 2, 3, 6" in out["indivisible"]
    assert "expert parallel needs expert_dp_mesh" in out["no_expert_mesh"]
    assert "dp='ddp' does not shard experts" in out["ddp"]
    assert "matches no module of ToyGPT" in out["dense"]
    assert dist.is_available()


def test_compile_leaves_the_experts_eager_and_matches():
    """Routing sizes are data: units holding experts get their other children compiled one by one."""
    from titan_parallel import CompileOptions

    model, ref = reference_model(**MOE), reference_model(**MOE)
    parallelize(model, units="layers.*", compile=CompileOptions(backend="aot_eager"))
    block = model.layers[0]
    compiled = {n for n, m in block.named_modules() if type(m).__name__ == "OptimizedModule"}
    assert {"attention", "attention_norm", "ffn_norm", "moe.gate"} <= compiled
    assert not any("experts" in n for n in compiled)
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    model(x).sum().backward()
    ref(x).sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert ((p.grad - q.grad).norm() / q.grad.norm()).item() < 1e-5, name  # summation order only


def _readme_ep_example():
    import contextlib
    import io
    import pathlib
    import re

    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    block = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), re.S) if "ep_mesh" in b][0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(readme), "exec"), {"__name__": "readme"})
    return out.getvalue().strip(), block.split("print(")[-1].split("# ")[-1].strip()


def test_readme_expert_parallel_example_runs_on_two_ranks():
    with DistributedPool(world_size=2) as pool:
        for printed, expected in pool.run(_readme_ep_example):
            assert printed == expected
