"""Streaming mode: packing, dp/worker sharding, exact resume (0 and 2 workers), bad records."""

import json

import numpy as np
import pytest
import torch
from titan_data import DataError, build_dataloader, documents, load_tokenizer

L, B = 16, 4


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def stream_of(tok, docs):
    return np.concatenate([tok.encode(d, bos=True, eos=True) for d in docs])


def take(loader, n):
    return [next(loader) for _ in range(n)]


def flat(batches):
    """The token stream a list of batches was cut from (inputs, then the last label)."""
    xs = torch.cat([x.reshape(-1) for x, _ in batches]).numpy()
    return np.concatenate([xs, batches[-1][1].reshape(-1)[-1:].numpy()])


def loader(tok, **kw):
    args = dict(tokenizer=tok, seq_len=L, local_batch_size=B, mode="streaming")
    args.update(kw)
    return build_dataloader(kw.pop("dataset", "tiny"), **{k: v for k, v in args.items() if k != "dataset"})


def test_packing_is_the_document_stream_cut_into_windows(tok):
    batches = list(loader(tok, infinite=False))
    expected = stream_of(tok, documents("tiny"))
    assert len(batches) == (len(expected) - 1) // (B * L)
    for k, (x, y) in enumerate(batches):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, L)
        assert np.array_equal(x.numpy().ravel(), expected[k * B * L:(k + 1) * B * L])
        assert np.array_equal(y.numpy().ravel(), expected[k * B * L + 1:(k + 1) * B * L + 1])
    # documents are separated by EOS then BOS
    s = flat(batches)
    assert s[0] == tok.bos_id and np.sum(s == tok.bos_id) == np.sum(s[1:] == tok.bos_id) + 1


@pytest.mark.parametrize("workers", [0, 2])
def test_dp_shards_are_disjoint_and_cover_every_document(tok, workers):
    docs, dp = documents("tiny"), 2
    readers = dp * max(1, workers)
    seen = []
    for rank in range(dp):
        batches = list(loader(tok, dp_rank=rank, dp_world_size=dp, num_workers=workers, infinite=False))
        nw = max(1, workers)
        ids = [[i for i in range(len(docs)) if i % readers == rank + w * dp] for w in range(nw)]
        expected = [stream_of(tok, [docs[i] for i in mine]) for mine in ids]
        counts = [(len(e) - 1) // (B * L) for e in expected]
        # strict round-robin over the workers that still have data
        per_worker, w = [[] for _ in range(nw)], 0
        for batch in batches:
            while len(per_worker[w]) == counts[w]:
                w = (w + 1) % nw
            per_worker[w].append(batch)
            w = (w + 1) % nw
        assert [len(p) for p in per_worker] == counts
        for w, mine in enumerate(per_worker):
            got, expected_w = flat(mine), expected[w]
            assert np.array_equal(got, expected_w[:len(got)])
            assert len(expected_w) - len(got) < B * L  # only the tail short of a batch is left
            seen += ids[w]
    assert sorted(seen) == list(range(len(docs)))


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_mid_epoch_and_across_epochs(tok, workers):
    first = loader(tok, seq_len=32, local_batch_size=8, num_workers=workers)
    take(first, 13)
    state = json.loads(json.dumps(first.state_dict()))  # plain data
    ref = take(first, 27)  # what the uninterrupted loader gives next (the 40 batches span > 2 epochs)
    first.close()
    resumed = loader(tok, seq_len=32, local_batch_size=8, num_workers=workers)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(take(resumed, 27), ref):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    resumed.close()


def test_finite_pass_restarts_when_iterated_again_and_resumes_to_the_end(tok):
    ld = loader(tok, infinite=False, num_workers=2)
    full = list(ld)
    assert len(list(ld)) == len(full)  # a second pass
    ld2 = loader(tok, infinite=False, num_workers=2)
    take(ld2, 5)
    state = ld2.state_dict()
    ld3 = loader(tok, infinite=False, num_workers=2)
    ld3.load_state_dict(state)
    rest = list(ld3)
    assert len(rest) == len(full) - 5 and all(torch.equal(a[0], b[0]) for a, b in zip(rest, full[5:]))


def test_resume_on_another_layout_is_refused(tok):
    state = loader(tok, dp_world_size=2).state_dict()
    with pytest.raises(DataError, match="dp_world_size=2.*same layout"):
        loader(tok).load_state_dict(state)
    with pytest.raises(DataError, match="'pretokenized' loader"):
        loader(tok, mode="pretokenized").load_state_dict(state)


def test_more_readers_than_documents_is_a_clear_error(tok):
    ld = loader(tok, split="validation", dp_world_size=8, dp_rank=7)
    with pytest.raises(DataError, match="fewer than the 8 readers"):
        next(ld)
