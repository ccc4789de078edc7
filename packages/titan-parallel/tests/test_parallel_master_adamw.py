"""apply_mixed_precision(persistent=True) + MasterAdamW: bf16 copies kept between steps, AdamW
reading their bf16 gradients and writing them. The first step's loss and gradients are the
per-forward casts' numbers bit for bit; the updates are torch's AdamW up to float32 rounding;
checkpoints (torch's optimizer state dict) resume exactly; a weight changed from outside is cast
again."""

import copy

import pytest
import torch
from parallel_toy_models import batch, loss_fn, reference_model
from titan_parallel import (
    MasterAdamW,
    ParallelConfigError,
    apply_ac,
    apply_compile,
    apply_mixed_precision,
    compute_copies,
    parallelize,
)
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

STEPS = 3
HP = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def _run(model, opt, steps=STEPS, start=0, scale=None):
    """(losses, float32 gradients per step, parameters after) of `steps` AdamW steps."""
    losses, grads = [], []
    copies = compute_copies(model)
    for step in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        x, y = batch(step)
        loss = loss_fn(model(x), y)
        loss.backward()
        losses.append(loss.item())
        if copies is None:
            grads.append([p.grad.clone() for p in model.parameters()])
        else:
            assert all(p.grad is None for p in model.parameters())
            held = [copies.copy_of(p).grad for p in model.parameters()]
            assert all(g.dtype == torch.bfloat16 for g in held)
            grads.append([g.float() for g in held])
        if scale is not None:
            if copies is None:
                for p in model.parameters():
                    p.grad.div_(scale)
            else:
                opt.grad_scale = torch.tensor(scale)
        opt.step()
        if hasattr(opt, "grad_scale"):
            del opt.grad_scale
    states = [opt.state[p][k].clone() for p in model.parameters() for k in ("exp_avg", "exp_avg_sq")]
    return losses, grads, [p.detach().clone() for p in model.parameters()] + states


def _pair(variant: str):
    ref = reference_model()
    if variant == "tied":
        ref.output.weight = ref.tok_embeddings.weight
    a, b = copy.deepcopy(ref), copy.deepcopy(ref)
    for m in (a, b):
        if variant == "full_ac":
            apply_ac(m, mode="full")
        if variant == "compile":
            apply_compile(m)
    apply_mixed_precision(a)
    apply_mixed_precision(b, persistent=True)
    return a, torch.optim.AdamW(a.parameters(), foreach=True, **HP), b, MasterAdamW(b.parameters(), b, **HP)


def _close(got, want, rtol=1e-4, atol=1e-6):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("variant", ["eager", "tied", "full_ac", "compile", "grad_scale"])
def test_trains_like_the_casts_with_torchs_adamw(variant):
    """Step 1: the same loss and gradients bit for bit, then weights and both moments equal up to
    float32 rounding. Later steps: bf16 copies of weights one float32 ulp apart can round apart,
    and Adam magnifies near-zero gradients, so only the losses are compared there."""
    torch._dynamo.reset()
    scale = 3.0 if variant == "grad_scale" else None
    a, opt_a, b, opt_b = _pair(variant)
    want_losses, want_grads, want_state = _run(a, opt_a, steps=1, scale=scale)
    losses, grads, state = _run(b, opt_b, steps=1, scale=scale)
    assert losses == want_losses
    for g, w in zip(grads[0], want_grads[0]):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    _close(state, want_state, rtol=1e-5, atol=1e-7)
    more_want, _, _ = _run(a, opt_a, steps=STEPS - 1, start=1, scale=scale)
    more, _, _ = _run(b, opt_b, steps=STEPS - 1, start=1, scale=scale)
    assert more == pytest.approx(more_want, rel=1e-4)
    if variant == "eager":  # the check can fail: a gradient scaled by 1.5 shows in the moments
        c, opt_c, _, _ = _pair("eager")
        _, _, wrong = _run(c, opt_c, steps=1, scale=1.5)
        with pytest.raises(AssertionError):
            _close(state, wrong, rtol=1e-5, atol=1e-7)


def test_compiled_update_equals_the_eager_one():
    torch._dynamo.reset()
    ref = reference_model()
    b = apply_mixed_precision(copy.deepcopy(ref), persistent=True)
    c = apply_mixed_precision(copy.deepcopy(ref), persistent=True)
    eager = MasterAdamW(b.parameters(), b, **HP)
    compiled = MasterAdamW(c.parameters(), c, compile=True, **HP)
    _, _, want = _run(b, eager)
    _, _, got = _run(c, compiled)
    _close(got, want, rtol=1e-5, atol=1e-7)
    # the copies hold the new weights, rounded
    copies = compute_copies(c)
    for p in c.parameters():
        assert torch.equal(copies.copy_of(p), p.detach().to(torch.bfloat16))


def test_resumes_exactly_from_the_optimizer_state_dict():
    """torch's state dict (what DCP saves): 2 steps, a fresh model and optimizer loading both
    state dicts before any forward (DCP initializes the state with a float32 step at lr 0), 2 more
    steps = 4 steps without the stop."""
    _, _, b, opt_b = _pair("eager")
    start = copy.deepcopy(b.state_dict())
    _, _, want = _run(b, opt_b, steps=4)

    first = reference_model()
    first.load_state_dict(start)
    apply_mixed_precision(first, persistent=True)
    opt_1 = MasterAdamW(first.parameters(), first, **HP)
    _run(first, opt_1, steps=2)
    model_sd, opt_sd = copy.deepcopy(first.state_dict()), copy.deepcopy(get_optimizer_state_dict(first, opt_1))

    second = apply_mixed_precision(reference_model(), persistent=True)
    opt_2 = MasterAdamW(second.parameters(), second, **HP)
    second.load_state_dict(model_sd)
    set_optimizer_state_dict(second, opt_2, opt_sd)
    _, _, got = _run(second, opt_2, steps=2, start=2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_a_weight_changed_outside_the_optimizer_is_cast_again():
    _, _, b, opt_b = _pair("eager")
    _run(b, opt_b, steps=1)
    other = reference_model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    b.load_state_dict(other.state_dict())  # in place: the version counters move
    want = apply_mixed_precision(copy.deepcopy(other))
    x, _ = batch(7)
    with torch.no_grad():
        assert torch.equal(b(x), want(x))


def test_refusals():
    with pytest.raises(ParallelConfigError, match="persistent=True"):
        MasterAdamW(reference_model().parameters(), apply_mixed_precision(reference_model()))
    with pytest.raises(ParallelConfigError, match="mixed_precision is None"):
        parallelize(reference_model(), persistent_casts=True)
    _, _, b, opt_b = _pair("eager")
    x, y = batch(0)
    loss_fn(b(x), y).backward()
    for p in b.parameters():
        p.grad = torch.zeros_like(p)  # a float32 gradient beside the copy's
    with pytest.raises(ParallelConfigError, match="bypassed the copies"):
        opt_b.step()


def test_readme_example_runs():
    import pathlib
    import re
    import textwrap

    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    block = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), re.S) if "MasterAdamW(" in b][0]
    exec(compile(textwrap.dedent(block), str(readme), "exec"), {"__name__": "readme"})


def test_copies_follow_storage_swaps_freezing_and_inference_mode():
    """`p.data = ...` (to_empty, .to()) keeps the version counter but not the storage; a frozen
    weight unfrozen later needs its copy to want a gradient again; copies first made under
    inference_mode cannot train."""
    model = apply_mixed_precision(reference_model(), persistent=True)
    x, y = batch(0)
    with torch.inference_mode():
        model(x)
    loss_fn(model(x), y).backward()  # would fail on inference-tensor copies
    copies = compute_copies(model)
    w = model.output.weight
    w.data = torch.full_like(w, 0.25)
    with torch.no_grad():
        model(x)
    assert torch.equal(copies.copy_of(w), torch.full_like(w, 0.25).to(torch.bfloat16))
    w.requires_grad_(False)
    with torch.no_grad():
        model(x)
    assert not copies.copy_of(w).requires_grad
    w.requires_grad_(True)
    opt = MasterAdamW(model.parameters(), model, **HP)
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    assert copies.copy_of(w).grad is not None and any(t is copies.copy_of(w) for t in opt.grad_holders())


def test_grad_holders_include_parameters_without_copies():
    """A parameter already in bf16 gets no copy: its own gradient is stepped, and counted in the norm."""
    model = reference_model()
    model.output.to(torch.bfloat16)
    apply_mixed_precision(model, persistent=True)
    opt = MasterAdamW(model.parameters(), model, **HP)
    x, y = batch(0)
    loss_fn(model(x), y).backward()
    holders = opt.grad_holders()
    assert any(t is model.output.weight for t in holders)
    assert len(holders) == len(list(model.parameters()))
    before = model.output.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.output.weight)
