"""Token folders: pretokenize a source, read it back, and refuse folders that do not match their index."""

import json

import numpy as np
import pytest
import torch
from titan_data import (
    DataError,
    build_dataloader,
    documents,
    load_tokenizer,
    open_token_dir,
    pretokenize,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture
def folder(tok, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents("tiny")))
    out = tmp_path / "tokens"
    pretokenize("local", out, tokenizer=tok, dataset_path=str(src), shard_tokens=500)  # several shards
    return out


def test_shards_hold_the_document_stream(tok, folder):
    store = open_token_dir(folder)
    expected = np.concatenate([tok.encode(d, bos=True, eos=True) for d in documents("tiny")])
    assert len(store.offsets) - 1 == -(-len(expected) // 500) > 2
    n = store.num_windows(37)
    got = store.windows(np.arange(n), 37)  # windows spanning shard files
    assert np.array_equal(got[:, :-1].ravel(), expected[: n * 37])
    assert np.array_equal(got[:, -1], expected[37:(n + 1) * 37:37])


def test_token_folder_loader_equals_the_in_memory_one(tok, folder):
    a = build_dataloader("tokens", dataset_path=str(folder), tokenizer=tok, seq_len=8, local_batch_size=4, seed=1)
    b = build_dataloader("tiny", tokenizer=tok, seq_len=8, local_batch_size=4, seed=1)
    for _ in range(20):
        (x, y), (u, v) = next(a), next(b)
        assert torch.equal(x, u) and torch.equal(y, v)


def test_local_files_in_pretokenized_mode_are_cached(tok, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents("tiny")))
    kw = dict(dataset_path=str(src), tokenizer=tok, seq_len=8, local_batch_size=4, mode="pretokenized",
              cache_dir=str(tmp_path / "cache"))
    x1, _ = next(build_dataloader("local", **kw))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    x2, _ = next(build_dataloader("local", **kw))
    assert torch.equal(x1, x2) and len(list((tmp_path / "cache").iterdir())) == 1


def test_folders_that_do_not_match_their_index_are_refused(tok, folder, tmp_path):
    shard = folder / "shard_00001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    with pytest.raises(DataError, match="shard_00001.bin has .* bytes but .* does not match its index"):
        open_token_dir(folder)
    shard.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(DataError, match="shard_00001.bin does not match the checksum"):
        open_token_dir(folder)
    shard.unlink()
    with pytest.raises(DataError, match="shard_00001.bin listed in .* is missing"):
        open_token_dir(folder)
    (folder / "index.json").write_text("{broken")
    with pytest.raises(DataError, match="cannot read .*index.json"):
        open_token_dir(folder)
    (folder / "index.json").unlink()
    with pytest.raises(DataError, match="has no index.json"):
        open_token_dir(folder)
    with pytest.raises(DataError, match="does not exist"):
        open_token_dir(tmp_path / "nowhere")


def test_tokens_made_with_another_tokenizer_are_refused(tmp_path, folder):
    from titan_data import train_tokenizer

    other = train_tokenizer(documents("tiny"), tmp_path / "other.tiktoken", vocab_size=600)
    with pytest.raises(DataError, match="was tokenized with tokenizer tiktoken-.*pass the same tokenizer"):
        build_dataloader("tokens", dataset_path=str(folder), tokenizer=other, seq_len=8, local_batch_size=2)


def test_pretokenize_refuses_to_overwrite_and_empty_sources(tok, folder, tmp_path):
    with pytest.raises(DataError, match="already exists"):
        pretokenize("tiny", folder, tokenizer=tok)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl"):
        pretokenize("local", tmp_path / "t2", tokenizer=tok, dataset_path=str(tmp_path / "empty.jsonl"))
    assert not (tmp_path / "t2").exists()


def test_an_open_store_pickles_without_its_memmaps(folder):
    import pickle

    store = open_token_dir(folder)
    first = store.windows(np.arange(3), 16)
    blob = pickle.dumps(store)
    assert len(blob) < 10_000  # file names, not data
    assert np.array_equal(pickle.loads(blob).windows(np.arange(3), 16), first)
