"""Pre-tokenized mode: layout independence, resume across dp degrees and workers, coverage."""

import json

import numpy as np
import pytest
import torch
from titan_data import DataError, build_dataloader, load_tokenizer
from titan_data.permutation import epoch_key, permute
from titan_data.pretokenized import global_windows

L = 8


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def make(tok, dp=1, rank=0, b=4, **kw):
    args = dict(tokenizer=tok, seq_len=L, local_batch_size=b, dp_rank=rank, dp_world_size=dp, seed=3) | kw
    return build_dataloader(kw.pop("dataset", "tiny"), **{k: v for k, v in args.items() if k != "dataset"})


def steps(loaders, micro, n):
    """n optimizer steps: each loader (one per dp rank) gives `micro` micro-batches per step; a step's
    data is every rank's micro-batches in rank order, concatenated."""
    out = []
    for _ in range(n):
        per_rank = [[next(ld) for _ in range(micro)] for ld in loaders]
        out.append(torch.cat([torch.cat([x for x, _ in mbs]) for mbs in per_rank]))
    return out


def as_set(step):
    return sorted(map(tuple, step.tolist()))


def test_permutation_is_a_bijection_and_changes_per_epoch():
    for n in (1, 2, 3, 7, 64, 1000, 4099):
        assert sorted(permute(np.arange(n), n, epoch_key(5, 0)).tolist()) == list(range(n))
    a, b = global_windows(np.arange(100), 100, 0), global_windows(np.arange(100, 200), 100, 0)
    assert sorted(a) == sorted(b) and not np.array_equal(a, b)
    assert not np.array_equal(a, global_windows(np.arange(100), 100, 1))


def test_same_samples_per_step_on_every_layout(tok):
    # global batch 8 per step: dp=1 x 2 micro-batches of 4, dp=2 x 4, dp=4 x 2, dp=8 x 1
    ref = steps([make(tok)], 2, 12)
    for dp, b, micro in ((2, 4, 1), (4, 2, 1), (8, 1, 1), (2, 2, 2)):
        got = steps([make(tok, dp, r, b) for r in range(dp)], micro, 12)
        assert all(as_set(s) == as_set(t) for s, t in zip(ref, got)), (dp, b, micro)
    # rank r's k-th batch is global samples [(k*dp + r)*B, ...): same rows, same order for dp=2 vs dp=1
    two = steps([make(tok, 2, r) for r in range(2)], 1, 12)
    assert all(torch.equal(s, t) for s, t in zip(ref, two))


def test_resume_on_another_data_parallel_degree(tok):
    ref = steps([make(tok, 2, r) for r in range(2)], 1, 40)  # crosses epochs
    saved = [make(tok, 2, r) for r in range(2)]
    steps(saved, 1, 15)
    states = [json.loads(json.dumps(ld.state_dict())) for ld in saved]
    assert states[0] == states[1] and states[0]["samples"] == 15 * 8
    one = make(tok)
    one.load_state_dict(states[1])
    assert all(torch.equal(s, t) for s, t in zip(steps([one], 2, 25), ref[15:]))
    four = [make(tok, 4, r, 2) for r in range(4)]
    for ld in four:
        ld.load_state_dict(states[0])
    assert all(as_set(s) == as_set(t) for s, t in zip(steps(four, 1, 25), ref[15:]))


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_with_workers(tok, workers):
    ref = steps([make(tok, num_workers=0)], 1, 30)
    ld = make(tok, num_workers=workers)
    assert all(torch.equal(s, t) for s, t in zip(steps([ld], 1, 9), ref))
    state = ld.state_dict()
    ld.close()
    again = make(tok, num_workers=workers)
    again.load_state_dict(state)
    assert all(torch.equal(s, t) for s, t in zip(steps([again], 1, 21), ref[9:]))
    again.close()


def test_one_epoch_covers_every_window_once_across_ranks(tok):
    dp, b = 2, 3
    n = make(tok).num_windows
    used = []
    for r in range(dp):
        ld = make(tok, dp, r, b, infinite=False)
        for k, (x, y) in enumerate(ld):
            idx = global_windows(np.arange((k * dp + r) * b, (k * dp + r + 1) * b), n, 3)
            rows = torch.from_numpy(ld.store.windows(idx, L))
            assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])
            used += idx.tolist()
    # every window at most once; all but the remainder short of one global batch
    assert len(used) == len(set(used)) == n - n % (dp * b)
    assert set(used) <= set(range(n))


def test_validation_split_and_finite_passes(tok):
    ld = make(tok, split="validation", infinite=False, b=2)
    first = list(ld)
    assert len(first) == ld.num_windows // 2 and len(list(ld)) == len(first)


def test_bundled_corpus_starts_at_once_with_its_shipped_tokens(tok):
    ld = build_dataloader("bundled", tokenizer=tok, seq_len=2048, local_batch_size=8)
    x, y = next(ld)
    assert x.shape == (8, 2048) and ld.num_windows == (1136559 - 1) // 2048
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < tok.vocab_size


def test_state_mismatches_are_clear_errors(tok):
    state = make(tok).state_dict()
    with pytest.raises(DataError, match="seq_len=8.*seq_len=16"):
        make(tok, seq_len=16).load_state_dict(state)
    with pytest.raises(DataError, match="seed=3.*seed=4.*the seed the run was started with"):
        make(tok, seed=4).load_state_dict(state)
    with pytest.raises(DataError, match="num_windows.*the token data changed"):
        make(tok, split="validation").load_state_dict(state)
    with pytest.raises(DataError, match="fewer than seq_len \\+ 1"):
        make(tok, seq_len=100000)
    with pytest.raises(DataError, match="fewer than one global batch"):
        make(tok, split="validation", infinite=False, b=10000)
