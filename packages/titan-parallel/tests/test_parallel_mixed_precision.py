"""apply_mixed_precision (one process, float32 parameters, bf16 compute) trains exactly like a
bf16 copy of the model whose float32 gradients update float32 master weights, which is what
FSDP2's MixedPrecisionPolicy(bf16, reduce_dtype=float32) does on one rank; and it keeps no bf16
copy of a weight alive between a unit's forward and its backward."""

import copy
import weakref

import pytest
import torch
from parallel_toy_models import batch, loss_fn, meta_model, reference_model
from titan_parallel import ParallelConfigError, apply_ac, apply_compile, apply_mixed_precision
from titan_parallel import mixed_precision as mp
from titan_parallel.modules import clean_name

STEPS = 3


def _optimizer(name: str, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.5)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _master_reference(model: torch.nn.Module, opt_name: str, accum: int = 1, prepare=lambda m: m):
    """By hand: a bf16 copy (AC / compile applied by `prepare`) computes, its gradients (as
    float32) update the float32 model, whose weights are copied into it before every step."""
    copy16 = copy.deepcopy(model).to(torch.bfloat16)
    if getattr(model, "tied", False):
        copy16.output.weight = copy16.tok_embeddings.weight
    copy16 = prepare(copy16)
    opt = _optimizer(opt_name, model.parameters())
    losses, grads = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, q in zip(model.parameters(), copy16.parameters()):
                q.copy_(p)
                p.grad = torch.zeros_like(p)
        total = 0.0
        for micro in range(accum):
            x, y = batch(step * accum + micro)
            copy16.zero_grad(set_to_none=True)
            loss = loss_fn(copy16(x), y) / accum
            loss.backward()
            total += loss.item()
            for p, q in zip(model.parameters(), copy16.parameters()):
                p.grad += q.grad.float()
        losses.append(total)
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return losses, grads


def _train(model: torch.nn.Module, opt_name: str, accum: int = 1):
    opt = _optimizer(opt_name, model.parameters())
    losses, grads = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accum):
            x, y = batch(step * accum + micro)
            loss = loss_fn(model(x), y) / accum
            loss.backward()
            total += loss.item()
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
        losses.append(total)
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return losses, grads


def _tied(model):
    model.output.weight = model.tok_embeddings.weight
    model.tied = True
    return model


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("variant", ["eager", "full_ac", "tied", "accum2", "keep"])
def test_eager_matches_bf16_compute_with_float32_masters_bitwise(variant, opt_name):
    ref = reference_model()
    if variant == "tied":
        _tied(ref)
    model = copy.deepcopy(ref)
    if variant == "tied":
        model.output.weight = model.tok_embeddings.weight
    if variant == "full_ac":
        apply_ac(model, mode="full")
    apply_mixed_precision(model, param_dtype="bfloat16", keep_for_backward=variant == "keep")
    accum = 2 if variant == "accum2" else 1
    want_losses, want_grads = _master_reference(ref, opt_name, accum)
    losses, grads = _train(model, opt_name, accum)
    assert losses == want_losses
    for got, want in zip(grads, want_grads):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert [clean_name(n) for n, _ in model.named_parameters()] == [n for n, _ in ref.named_parameters()]


@pytest.mark.parametrize("variant", ["compile", "compile_selective_ac", "moe_compile", "compile_keep"])
def test_compiled_units_match_a_compiled_bf16_copy_bitwise(variant):
    torch._dynamo.reset()
    kwargs = dict(n_experts=4, top_k=2) if variant == "moe_compile" else {}

    def prepare(m):
        if variant == "compile_selective_ac":
            apply_ac(m, mode="selective")
        return apply_compile(m, eager="layers.*.moe.experts" if kwargs else None)

    ref = reference_model(**kwargs)
    model = apply_mixed_precision(prepare(copy.deepcopy(ref)), keep_for_backward=variant == "compile_keep")
    want_losses, want_grads = _master_reference(ref, "sgd", prepare=prepare)
    losses, grads = _train(model, "sgd")
    assert losses == want_losses
    for got, want in zip(grads, want_grads):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    # the casts are graph inputs (new tensors every step): steps after the first compile nothing
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    loss_fn(model(batch(9)[0]), batch(9)[1]).backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("compiled", [False, True])
def test_no_bf16_weight_copy_outlives_its_units_forward(monkeypatch, compiled):
    """Like FSDP's reshard after forward: what backward saves of a cast is cast again there."""
    torch._dynamo.reset()
    casts: list[weakref.ref] = []

    def recording_before(self, module, args):
        real_before(self, module, args)
        casts.extend(weakref.ref(owner._parameters[name]) for owner, name in self.slots)
        assert all(owner._parameters[name].dtype == torch.bfloat16 for owner, name in self.slots)

    real_before = mp._UnitCast.before
    monkeypatch.setattr(mp._UnitCast, "before", recording_before)
    model = reference_model()
    if compiled:
        apply_compile(model)
    apply_mixed_precision(model)
    x, y = batch(0)
    loss = loss_fn(model(x), y)
    assert casts and all(ref() is None for ref in casts), "a bf16 weight copy is still referenced after forward"
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_keep_for_backward_holds_the_casts_until_backward(monkeypatch):
    """The check above can fail: without the saved-tensor hooks (keep_for_backward, FSDP's
    reshard_after_forward=False) autograd keeps the copies, and backward frees them."""
    casts: list[weakref.ref] = []
    real_before = mp._UnitCast.before

    def recording_before(self, module, args):
        real_before(self, module, args)
        casts.extend(weakref.ref(owner._parameters[name]) for owner, name in self.slots)

    monkeypatch.setattr(mp._UnitCast, "before", recording_before)
    model = apply_mixed_precision(reference_model(), keep_for_backward=True)
    loss = loss_fn(model(batch(0)[0]), batch(0)[1])
    assert any(ref() is not None for ref in casts)
    loss.backward()
    del loss
    assert all(ref() is None for ref in casts)


def test_restores_the_float32_parameters_when_forward_raises():
    model = apply_mixed_precision(reference_model())
    with pytest.raises(ValueError):
        model(torch.zeros(2, 3, 4, dtype=torch.long))  # 3-D tokens: the blocks fail
    assert all(isinstance(p, torch.nn.Parameter) and p.dtype == torch.float32
               for m in model.modules() for p in m._parameters.values() if p is not None)
    loss_fn(model(batch(0)[0]), batch(0)[1]).backward()  # and it trains on


def test_parameters_replaced_after_applying_are_the_ones_cast():
    """Built on meta, then to_empty + init (as a trainer does): the hooks follow the new tensors."""
    model = apply_mixed_precision(meta_model())
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights()
    ref = reference_model()
    want_losses, _ = _master_reference(ref, "sgd")
    losses, _ = _train(model, "sgd")
    assert losses == want_losses


def test_bad_dtype_is_refused():
    with pytest.raises(ParallelConfigError, match="param_dtype"):
        apply_mixed_precision(reference_model(), param_dtype="int8")


def test_float_inputs_are_cast_at_the_root_only():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    apply_mixed_precision(model, units=["0", "2"])
    out = model(torch.randn(4, 8))  # float32 in, as FSDP2's cast_forward_inputs allows
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert model[0].weight.grad.dtype == torch.float32
    plain = apply_mixed_precision(torch.nn.Linear(8, 2), units=[], cast_inputs=False)
    with pytest.raises(RuntimeError, match="dtype"):
        plain(torch.randn(4, 8))
