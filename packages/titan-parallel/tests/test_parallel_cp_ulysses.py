"""Context parallel on 4 gloo ranks: Ulysses (all-to-all) attention trained against one process
(cp4; FSDP x CP; CP x TP), and the ring path's buffer sharding, which runs on CPU even though
torch's ring attention kernels do not.
"""

from __future__ import annotations

import pytest
import torch
from test_parallel_pp_model import ToyConfig, ToyModel, batch, loss_fn, reference_run
from titan_mesh import ParallelDims
from titan_mesh.testing import DistributedPool
from titan_parallel import apply_fsdp, apply_tp, init_weights
from titan_parallel.context import apply_ulysses, context_parallel_ctx, shard_sequence, validate_cp
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

SEQ, LOCAL_BATCH, STEPS, LR = 8, 4, 2, 0.5
CFG = ToyConfig(max_seq=SEQ)  # RoPE table as long as the sequence: it is sharded with it
TP_PLAN = {
    **{f"layers.*.attention.{w}": ColwiseParallel() for w in ("wq", "wk", "wv")},
    "layers.*.attention.wo": RowwiseParallel(),
    "layers.*.feed_forward.w1": ColwiseParallel(),
    "layers.*.feed_forward.w2": RowwiseParallel(),
}


@pytest.fixture(scope="module")
def pool():
    with DistributedPool(4) as p:
        yield p


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def run_ulysses(cp: int, dp_shard: int, tp: int) -> dict:
    dims = ParallelDims(dp_shard=dp_shard, cp=cp, tp=tp, world_size=4)
    dims.build_mesh("cpu")
    cp_mesh = dims.get_mesh("cp")
    validate_cp(cp_degree=cp, seq_len=SEQ, method="ulysses", n_heads=CFG.n_heads, tp_degree=tp)
    with torch.device("meta"):
        model = ToyModel(CFG)
    if tp > 1:
        apply_tp(model, dims.get_mesh("tp"), TP_PLAN)
    wrapped = apply_ulysses(model, cp_mesh)
    apply_fsdp(model, dims.get_mesh("dp_shard_cp"))  # FSDP shards over data and context ranks together
    init_weights(model, device="cpu")
    tokens, labels = batch(LOCAL_BATCH * dp_shard, seq=SEQ)
    dp_rank = dims.get_mesh("dp_shard").get_local_rank() if dp_shard > 1 else 0
    mine = slice(dp_rank * LOCAL_BATCH, (dp_rank + 1) * LOCAL_BATCH)
    # (the optimizer first: after a no_grad forward FSDP's root keeps its parameters unsharded)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with torch.no_grad():  # outside the context the hooks stay out of the way
        plain_loss = loss_fn(model(tokens[mine]), labels[mine]).item()
    losses, grads = [], {}
    for step in range(STEPS):
        opt.zero_grad()
        tok, lab = tokens[mine].clone(), labels[mine].clone()
        with context_parallel_ctx(cp_mesh, buffers=[tok, lab, model.rope], seq_dims=[1, 1, 0],
                                  no_restore_buffers=[tok, lab], method="ulysses"):
            assert tok.shape == (LOCAL_BATCH, SEQ // cp) and model.rope.shape[0] == SEQ // cp
            loss = loss_fn(model(tok), lab)
            loss.backward()
        assert model.rope.shape[0] == SEQ
        losses.append(loss.item())
        if step == 0:
            grads = {n: _full(p.grad) for n, p in model.named_parameters()}
        opt.step()
    ref_losses, ref_grads = reference_run(tokens, labels, steps=STEPS, lr=LR, cfg=CFG)
    ref_mine = loss_fn(_reference_model()(tokens[mine]), labels[mine]).item()
    return {"wrapped": wrapped, "losses": losses, "ref_losses": ref_losses,
            "plain_err": abs(plain_loss - ref_mine),
            "grad_err": max((grads[n] - ref_grads[n]).abs().max().item() for n in grads)}


def _reference_model() -> ToyModel:
    model = ToyModel(CFG)
    model.init_weights()
    return model


@pytest.mark.parametrize(("cp", "dp_shard", "tp"), [(4, 1, 1), (2, 2, 1), (2, 1, 2)])
def test_ulysses_matches_one_process(pool, cp, dp_shard, tp):
    results = pool.run(run_ulysses, cp, dp_shard, tp)
    assert results[0]["wrapped"] == [f"layers.{i}.attention.sdpa" for i in range(CFG.n_layers)]
    # each rank's loss covers its tokens; all ranks hold equally many, so the mean is the batch's
    mean = [sum(step) / len(step) for step in zip(*(r["losses"] for r in results))]
    assert mean == pytest.approx(results[0]["ref_losses"], abs=1e-5)
    assert results[0]["ref_losses"][1] < results[0]["ref_losses"][0] - 1e-3
    for r in results:
        assert r["grad_err"] < 1e-5 and r["plain_err"] < 1e-5, r


def ring_buffers(load_balance: bool, rotate: str) -> dict:
    from torch.distributed.tensor.experimental._attention import _cp_options

    dims = ParallelDims(dp_shard=1, cp=4, world_size=4)
    dims.build_mesh("cpu")
    mesh = dims.get_mesh("cp")
    tokens = torch.arange(32).view(2, 16)
    labels, rope = tokens + 100, torch.arange(32.0).view(16, 2)
    full = [tokens.clone(), labels.clone(), rope.clone()]
    before = (_cp_options.enable_load_balance, _cp_options.rotate_method)
    with context_parallel_ctx(mesh, buffers=[tokens, labels, rope], seq_dims=[1, 1, 0],
                              no_restore_buffers=[labels], rotate=rotate, load_balance=load_balance):
        inside = [t.clone() for t in (tokens, labels, rope)]
        options = (_cp_options.enable_load_balance, _cp_options.rotate_method.name)
    rank = mesh.get_local_rank()
    expect = [shard_sequence(t, d, rank, 4, load_balance=load_balance) for t, d in zip(full, (1, 1, 0))]
    return {"sharded_ok": all(torch.equal(a, b) for a, b in zip(inside, expect)),
            "restored": torch.equal(tokens, full[0]) and torch.equal(rope, full[2]),
            "labels_left_sharded": torch.equal(labels, expect[1]), "options": options,
            "options_restored": (_cp_options.enable_load_balance, _cp_options.rotate_method) == before}


@pytest.mark.parametrize(("load_balance", "rotate"), [(True, "allgather"), (False, "alltoall")])
def test_ring_context_shards_and_restores_buffers(pool, load_balance, rotate):
    for r in pool.run(ring_buffers, load_balance, rotate):
        assert r["sharded_ok"] and r["restored"] and r["labels_left_sharded"] and r["options_restored"], r
        assert r["options"] == (load_balance, {"allgather": "ALL_GATHER", "alltoall": "ALL_TO_ALL"}[rotate])
