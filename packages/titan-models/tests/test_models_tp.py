"""The tensor-parallel plan on 2 gloo ranks: init, logits, loss and gradients match one process."""

import pytest
import torch
import torch.nn.functional as F
from titan_mesh.testing import DistributedPool
from titan_models import get_model_spec
from titan_models.testing import FAMILIES, tiny_args


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(world_size=2) as p:
        yield p


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _loss_and_grads(model, tokens, loss_parallel):
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss_parallel as loss_parallel_ctx

    logits = model(tokens[:, :-1])
    if loss_parallel:
        assert isinstance(logits, DTensor)
        with loss_parallel_ctx():
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            loss.backward()
    else:
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
    grads = {n: _full(p.grad) for n, p in model.named_parameters()}
    return _full(loss).item(), grads


def _tp_vs_single(family, sequence_parallel, loss_parallel, tie, backend, mask):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.experimental import implicit_replication
    from torch.distributed.tensor.parallel import parallelize_module

    spec = get_model_spec(family)
    args = tiny_args(family, max_seq_len=32, tie_embeddings=tie, attn_backend=backend, attn_mask=mask, eos_id=5)
    spec.validate(args, tp=2)
    torch.manual_seed(7)
    reference = spec.build(args)  # built on CPU: initialized at once, no parallelism
    mesh = init_device_mesh("cpu", (2,))
    with torch.device("meta"):
        model = spec.build(args)
    plan = spec.tp_plan(model, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)
    parallelize_module(model, mesh, plan)
    model.to_empty(device="cpu")  # re-ties the embedding, which the plan had split
    with implicit_replication():
        model.init_weights()
    assert isinstance(model.layers["0"].attention.wo.weight, DTensor)
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    ref_params = dict(reference.named_parameters())
    init_equal = all(torch.equal(_full(p), ref_params[n]) for n, p in model.named_parameters())
    tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(3))
    tokens[:, 10] = tokens[0, 20] = 5  # document boundaries for block_causal
    if backend == "flex":  # FlexAttention has no backward on CPU: compare logits only
        with torch.no_grad():
            logits = _full(model(tokens[:, :-1]))
            err = (logits - reference(tokens[:, :-1])).abs().max() / logits.abs().max()
            return init_equal, 0.0, err.item()
    loss, grads = _loss_and_grads(model, tokens, loss_parallel)
    ref_loss, ref_grads = _loss_and_grads(reference, tokens, False)
    worst = max(((grads[n] - g).abs().max() / g.abs().max()).item() for n, g in ref_grads.items())
    return init_equal, abs(loss - ref_loss), worst


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sequence_parallel,loss_parallel,tie,backend,mask", [
    (True, True, False, "sdpa", "causal"),
    (False, False, True, "sdpa", "block_causal"),
    (True, True, True, "flex", "block_causal"),
])
def test_tp_plan_matches_one_process(pool, family, sequence_parallel, loss_parallel, tie, backend, mask):
    for init_equal, loss_diff, grad_err in pool.run(_tp_vs_single, family, sequence_parallel, loss_parallel,
                                                    tie, backend, mask):
        assert init_equal, "init_weights under TP differs from the single-process init"
        assert loss_diff < 1e-5
        assert grad_err < 1e-4
