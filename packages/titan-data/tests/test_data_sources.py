"""Each dataset source offline: local json / jsonl / parquet / txt files and folders, bad input."""

import json
import time

import numpy as np
import pytest
import torch
from titan_data import DataError, build_dataloader, documents, load_tokenizer
from titan_data.sources import local_files

L, B = 16, 2


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def reference(tok):
    """Batches of the tiny corpus read from memory: local files holding it must give the same."""
    return list(build_dataloader("tiny", tokenizer=tok, seq_len=L, local_batch_size=B, mode="streaming",
                                 infinite=False))


def local(tok, path, **kw):
    args = dict(seq_len=L, local_batch_size=B) | kw
    return build_dataloader("local", dataset_path=str(path), tokenizer=tok, **args)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "n": i}) + "\n" for i, d in enumerate(docs)))
    return path


def test_jsonl_json_and_parquet_files_match_the_in_memory_corpus(tok, tmp_path, reference):
    docs = documents("tiny")
    assert same(list(local(tok, write_jsonl(tmp_path / "a.jsonl", docs), infinite=False)), reference)
    (tmp_path / "b.json").write_text(json.dumps([{"body": d} for d in docs]))
    assert same(list(local(tok, tmp_path / "b.json", text_field="body", infinite=False)), reference)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet", row_group_size=7)
    assert same(list(local(tok, tmp_path / "c.parquet", infinite=False)), reference)


def test_text_files_one_document_per_file_or_per_line(tok, tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    for i, text in enumerate(["first book\nsecond line\n", "another book\n"]):
        (folder / f"{i}.txt").write_text(text)
    batches = list(build_dataloader("local", dataset_path=str(folder), tokenizer=tok, seq_len=4,
                                    local_batch_size=1, infinite=False))
    stream = torch.cat([x.ravel() for x, _ in batches]).tolist()
    assert stream.count(tok.bos_id) == 2  # two documents
    lines = list(build_dataloader("local", dataset_path=str(folder), tokenizer=tok, seq_len=4, local_batch_size=1,
                                  infinite=False, text_sample_by="line"))
    assert torch.cat([x.ravel() for x, _ in lines]).tolist().count(tok.bos_id) == 3


def test_folder_with_split_subfolders_and_dp_sharding_over_files(tok, tmp_path):
    docs = documents("tiny")
    (tmp_path / "train").mkdir()
    (tmp_path / "validation").mkdir()
    for k in range(4):
        write_jsonl(tmp_path / "train" / f"part{k}.jsonl", docs[k::4])
    write_jsonl(tmp_path / "validation" / "v.jsonl", documents("tiny", "validation"))
    assert local_files(str(tmp_path), "validation")[1] == [tmp_path / "validation" / "v.jsonl"]
    streams = []
    for rank in range(2):
        batches = list(local(tok, tmp_path, dp_rank=rank, dp_world_size=2, infinite=False, seq_len=1,
                             local_batch_size=1))
        streams.append([int(x) for x, _ in batches] + [int(batches[-1][1])])
    whole = np.concatenate([tok.encode(d, bos=True, eos=True) for d in docs]).tolist()
    assert sorted(streams[0] + streams[1]) == sorted(whole)  # disjoint and complete
    assert min(streams[0].count(tok.bos_id), streams[1].count(tok.bos_id)) > 0  # both ranks read
    val = list(local(tok, tmp_path, split="validation", infinite=False))
    assert len(val) > 0
    with pytest.raises(DataError, match="no 'test' data"):
        local(tok, tmp_path, split="test")


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_over_local_files(tok, tmp_path, workers):
    docs = documents("tiny")
    for k in range(4):
        write_jsonl(tmp_path / f"part{k}.jsonl", docs[k::4])
    first = local(tok, tmp_path, num_workers=workers, seq_len=64, local_batch_size=4)  # crosses epochs
    for _ in range(11):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    rest = [next(first) for _ in range(19)]  # what the uninterrupted loader gives next
    first.close()
    resumed = local(tok, tmp_path, num_workers=workers, seq_len=64, local_batch_size=4)
    resumed.load_state_dict(state)
    assert same([next(resumed) for _ in range(19)], rest)
    resumed.close()


def test_malformed_records_are_skipped_and_counted_or_raise(tok, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "good one"}\n{"text": null}\n{"other": 1}\n{"text": "good two"}\n')
    ld = local(tok, f, infinite=False, seq_len=2, local_batch_size=1)
    assert len(list(ld)) > 0 and ld.skipped_records == 2
    with pytest.raises(DataError, match=r"'text' is NoneType.*on_bad_record='skip'"):
        list(local(tok, f, infinite=False, seq_len=2, local_batch_size=1, on_bad_record="raise"))
    every = tmp_path / "allbad.jsonl"
    every.write_text('{"text": null, "x": 1}\n')
    with pytest.raises(DataError, match="no usable document"):
        next(local(tok, every, seq_len=2, local_batch_size=1))


def test_bad_local_input_names_the_path(tok, tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'missing.jsonl'} does not exist"):
        local(tok, tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="holds no"):
        local(tok, tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported type"):
        local(tok, tmp_path / "x.csv")
    f = write_jsonl(tmp_path / "a.jsonl", ["hello"], field="content")
    with pytest.raises(DataError, match=r"unknown text field 'txt'.*did you mean 'text'|known text fields are content, n"):
        local(tok, f, text_field="txt")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl"):
        local(tok, tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"\n')
    with pytest.raises(DataError, match="broken.jsonl"):
        local(tok, tmp_path / "broken.jsonl")


def test_hub_datasets_fail_fast_and_clearly_offline(tok, monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError, match="allenai/c4.*not reachable.*dataset='bundled'"):
        build_dataloader("c4", tokenizer=tok, seq_len=L, local_batch_size=B)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DataError, match="'someone/corpus'.*cannot connect to 127.0.0.1:9"):
        build_dataloader("hub", dataset_path="someone/corpus", tokenizer=tok, seq_len=L, local_batch_size=B)
    assert time.perf_counter() - start < 10
    with pytest.raises(DataError, match="no pre-tokenized mode"):
        build_dataloader("c4", tokenizer=tok, seq_len=L, local_batch_size=B, mode="pretokenized")


def test_loaders_pickle_for_spawned_workers(tok, tmp_path):
    """Workers started by spawn/forkserver (the default from Python 3.14) receive pickled readers."""
    import pickle

    from titan_data.pretokenized import _Batches
    from titan_data.streaming import _ReaderDataset

    f = write_jsonl(tmp_path / "a.jsonl", documents("tiny"))
    ld = local(tok, f, num_workers=2)
    reader = pickle.loads(pickle.dumps(_ReaderDataset(ld.source, ld.cfg, 0, 1, 2, [None, None], 0)))
    x, y, w, _ = next(iter(reader))
    assert w == 0 and x.shape == (B, L)
    pre = build_dataloader("tiny", tokenizer=tok, seq_len=L, local_batch_size=B)
    batches = pickle.loads(pickle.dumps(_Batches(pre.store, 0, L, B, 0, 1, 0)))
    assert torch.equal(batches[0][0], next(pre)[0])


def test_a_path_given_as_the_dataset_name_reads_it(tmp_path):
    tok = load_tokenizer()
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"document {i} " * 30}) for i in range(20)))
    by_path = build_dataloader(str(data), tokenizer=tok, seq_len=16, local_batch_size=2)
    by_name = build_dataloader("local", tokenizer=tok, seq_len=16, local_batch_size=2, dataset_path=str(data))
    a, b = next(iter(by_path)), next(iter(by_name))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(DataError, match="is a path and dataset_path"):
        build_dataloader(str(data), tokenizer=tok, seq_len=16, local_batch_size=2, dataset_path=str(data))
    with pytest.raises(DataError, match="dataset_config 'en' applies to Hugging Face Hub datasets"):
        build_dataloader(str(data), tokenizer=tok, seq_len=16, local_batch_size=2, dataset_config="en")


def test_raise_on_bad_records_is_not_hidden_by_a_cache_made_with_skip(tmp_path):
    tok = load_tokenizer()
    data = tmp_path / "train.jsonl"
    rows = [{"text": f"document {i} " * 30} for i in range(10)] + [{"text": 7}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    kw = dict(tokenizer=tok, seq_len=16, local_batch_size=2, dataset_path=str(data), mode="pretokenized",
              cache_dir=str(tmp_path / "cache"))
    next(iter(build_dataloader("local", on_bad_record="skip", **kw)))  # tokenized and cached, skipping one
    with pytest.raises(DataError, match="expected a string"):
        next(iter(build_dataloader("local", on_bad_record="raise", **kw)))
