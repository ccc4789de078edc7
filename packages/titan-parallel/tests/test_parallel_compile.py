"""Per-block torch.compile (inductor on CPU) composed with activation checkpointing gives the
eager numbers, and the blocks share one compiled graph."""

import copy

import torch
from parallel_toy_models import batch, loss_fn, reference_model
from titan_parallel import apply_ac, apply_compile


def test_compiled_checkpointed_blocks_match_eager():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # other tests in this process compiled too
    ref = reference_model()
    model = apply_compile(apply_ac(copy.deepcopy(ref), mode="selective"))
    assert [type(b).__name__ for b in model.layers] == ["OptimizedModule"] * 2
    # nn.Module.state_dict keeps compile's `_orig_mod.` segment; torch's DCP helper drops it again.
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    assert "layers.0._orig_mod.attention.wq.weight" in model.state_dict()
    assert set(get_model_state_dict(model)) == set(ref.state_dict())
    for step in range(2):
        x, y = batch(step)
        loss, ref_loss = loss_fn(model(x), y), loss_fn(ref(x), y)
        loss.backward()
        ref_loss.backward()
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    # One frame compiled for both blocks (parameters are graph inputs, not constants).
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def _saved_bytes(model, x):
    """Bytes autograd keeps for backward during one forward (what the compiled graphs save)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return total[0], out


def test_memory_budget_recomputes_inside_the_graph_with_the_same_numbers():
    """A budget of 0 keeps far less for backward than torch's default (1.0: save what it likes),
    with the same loss and gradients (SGD's view: gradients compared directly), and the budget is
    in force only while the compiled units run."""
    from torch._functorch import config as functorch_config

    ref = reference_model()
    x, y = batch(0)
    saved, grads, losses = {}, {}, {}
    for budget in (None, 0.0):
        torch._dynamo.reset()
        model = apply_compile(copy.deepcopy(ref), memory_budget=budget)
        saved[budget], out = _saved_bytes(model, x)
        loss = loss_fn(out, y)
        loss.backward()
        losses[budget] = loss.detach()
        grads[budget] = [p.grad for p in model.parameters()]
        assert functorch_config.activation_memory_budget == 1.0   # put back after each unit's call
    assert saved[0.0] < 0.7 * saved[None], saved
    torch.testing.assert_close(losses[0.0], losses[None], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0.0], grads[None]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_memory_budget_outside_zero_to_one_is_refused():
    import pytest
    from titan_parallel import ParallelConfigError

    with pytest.raises(ParallelConfigError, match="memory_budget = 1.5 must be within"):
        apply_compile(reference_model(), memory_budget=1.5)
