"""Context parallel's sharding and load-balancing logic, and its request checks (one process)."""

from __future__ import annotations

import pytest
import torch
from titan_mesh.testing import fake_world
from titan_parallel.context import (
    causal_work_per_rank,
    context_parallel_ctx,
    load_balance_indices,
    shard_sequence,
    unshard_sequence,
    validate_cp,
)
from titan_parallel.errors import ParallelConfigError
from torch.distributed.device_mesh import init_device_mesh


def test_head_tail_order_pairs_chunk_r_with_its_mirror():
    assert load_balance_indices(8, 2).tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    assert load_balance_indices(8, 4).tolist() == [0, 7, 1, 6, 2, 5, 3, 4]


def test_head_tail_order_is_torchs():
    lb = pytest.importorskip("torch.distributed.tensor.experimental._attention")
    for seq, cp in ((8, 2), (32, 4), (48, 3)):
        ours = load_balance_indices(seq, cp)
        assert torch.equal(lb._HeadTailLoadBalancer(seq, cp, "cpu")._generate_indices()[0].long(), ours)


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("cp", [2, 4])
def test_shards_reassemble(cp, balanced):
    x = torch.randn(3, 16, 5)
    shards = [shard_sequence(x, 1, r, cp, load_balance=balanced) for r in range(cp)]
    assert all(s.shape == (3, 16 // cp, 5) for s in shards)
    assert torch.equal(unshard_sequence(shards, 1, load_balance=balanced), x)
    if not balanced:
        assert torch.equal(shards[1], x[:, 16 // cp: 32 // cp])


def test_load_balancing_evens_the_causal_work():
    assert len(set(causal_work_per_rank(64, 4))) == 1
    plain = causal_work_per_rank(64, 4, load_balance=False)
    assert plain == sorted(plain) and plain[-1] > 3 * plain[0]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(cp_degree=2, seq_len=6), r"seq_len=6 is not divisible by 2 x cp = 4"),
    (dict(cp_degree=2, seq_len=6, load_balance=False), None),
    (dict(cp_degree=4, seq_len=6, load_balance=False), r"not divisible by cp = 4"),
    (dict(cp_degree=2, seq_len=6, method="ulysses", n_heads=4), None),
    (dict(cp_degree=4, seq_len=6, method="ulysses", n_heads=4), r"seq_len=6 is not divisible by cp = 4"),
    (dict(cp_degree=2, seq_len=8, method="ulysses", n_heads=6, tp_degree=2), r"n_heads=6 / tp=2 = 3 heads"),
    (dict(cp_degree=2, seq_len=8, method="ulysses", n_heads=8, n_kv_heads=2, tp_degree=2), r"n_kv_heads=2"),
    (dict(cp_degree=2, seq_len=8, method="ulysses", n_heads=5), r"n_heads=5 = 5 heads"),
    (dict(cp_degree=2, seq_len=8, method="ulysses", load_balance=True), r"does not apply to Ulysses"),
    (dict(cp_degree=2, seq_len=8, method="ulyses"), r"closest: 'ulysses'"),
    (dict(cp_degree=2, seq_len=8, rotate="all2all"), r"rotate method 'all2all'"),
    (dict(cp_degree=1, seq_len=7, method="ulysses", n_heads=3), None),
])
def test_validate_cp(kwargs, match):
    if match is None:
        validate_cp(**kwargs)
    else:
        with pytest.raises(ParallelConfigError, match=match):
            validate_cp(**kwargs)
    assert issubclass(ParallelConfigError, ValueError)


def test_context_rejects_bad_buffers_before_sharding():
    with fake_world(2):
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("cp",))
        tokens, rope = torch.zeros(2, 8, dtype=torch.long), torch.zeros(16, 4)
        cases = [
            (dict(buffers=[tokens, rope], seq_dims=[1, 0]), r"different lengths along their seq_dims: \[8, 16\]"),
            (dict(buffers=[tokens], seq_dims=[1, 0]), r"1 buffers but 2 seq_dims"),
            (dict(buffers=[torch.nn.Parameter(torch.zeros(8))], seq_dims=[0]), r"requires grad"),
            (dict(buffers=[tokens], seq_dims=[1], no_restore_buffers=[rope]), r"subset"),
            (dict(buffers=[torch.zeros(2, 6)], seq_dims=[1]), r"2 x cp = 4"),
        ]
        for kwargs, match in cases:
            with pytest.raises(ParallelConfigError, match=match):
                with context_parallel_ctx(mesh, **kwargs):
                    pass
        assert tokens.shape == (2, 8)
