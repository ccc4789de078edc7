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
