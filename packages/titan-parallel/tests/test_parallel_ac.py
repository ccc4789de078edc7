"""Activation checkpointing: every mode gives the same loss and gradients as no checkpointing, and
recomputes what its policy says (counted as ops dispatched during backward)."""

import copy
from collections import Counter

import pytest
import torch
from parallel_toy_models import batch, loss_fn, reference_model
from titan_parallel import OpPolicy, ParallelConfigError, apply_ac
from torch.utils._python_dispatch import TorchDispatchMode


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _run(model):
    x, y = batch(0)
    loss = loss_fn(model(x), y)
    with CountOps() as ops:
        loss.backward()
    sdpa = sum(v for k, v in ops.counts.items() if k.startswith("_scaled_dot_product") and "backward" not in k)
    return loss, [p.grad for p in model.parameters()], ops.counts["mm"], sdpa, ops.counts["silu"]


# Two blocks of 7 matmuls each; recompute stops early after the last input backward needs, so the
# final w2 of a fully recomputed block is not replayed (6 per block).
@pytest.mark.parametrize("options,extra_mm,sdpa,silu", [
    (dict(mode="full"), 12, 2, 2),
    (dict(mode="selective", layer_freq=2), 6, 1, 1),
    (dict(mode="selective", layer_freq="1"), 12, 2, 2),
    (dict(mode="selective"), 6, 0, 2),  # every other matmul (wk, wo, w3) and the elementwise ops
    (dict(mode="selective", op_policy=OpPolicy(recompute_every_nth_matmul=0)), 0, 0, 2),
])
def test_ac_modes_match_no_ac_and_recompute_what_they_say(options, extra_mm, sdpa, silu):
    ref = reference_model()
    model = apply_ac(copy.deepcopy(ref), **options)
    base_loss, base_grads, base_mm, _, _ = _run(ref)
    loss, grads, mm, recomputed_sdpa, recomputed_silu = _run(model)
    assert torch.equal(loss, base_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, base_grads))
    assert (mm - base_mm, recomputed_sdpa, recomputed_silu) == (extra_mm, sdpa, silu)


def test_ac_wraps_units_in_place_and_none_is_a_no_op():
    model = apply_ac(reference_model(), mode="full", units=["layers.1"])
    assert type(model.layers[0]).__name__ == "Block"
    assert type(model.layers[1]).__name__ == "CheckpointWrapper"
    assert apply_ac(model, mode="none") is model
    # state_dict names are unchanged by the wrapper
    assert "layers.1.attention.wq.weight" in model.state_dict()


@pytest.mark.parametrize("options,match", [
    (dict(mode="selectve"), "mode='selectve'.*closest: 'selective'"),
    (dict(mode="full", layer_freq=2), "only apply to mode='selective'"),
    (dict(mode="selective", layer_freq="two"), "layer_freq='two' is invalid"),
    (dict(mode="selective", layer_freq=0), "layer_freq=0 is invalid"),
    (dict(mode="selective", units=["layer.*"]), "'layer.\\*' matches no submodule.*closest"),
])
def test_ac_rejects_bad_options(options, match):
    with pytest.raises(ParallelConfigError, match=match):
        apply_ac(reference_model(), **options)
