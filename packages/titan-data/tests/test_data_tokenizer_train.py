"""The BPE trainer: what it learns, its file format, and that it reproduces the bundled tokenizer."""

from collections import Counter

import pytest
from titan_data import BUNDLED_TOKENIZER, DataError, documents, load_tokenizer, train_tokenizer
from titan_data.tokenizer_train import train_bpe


def test_merges_follow_pair_frequency():
    ranks = train_bpe(Counter({b"abab": 10, b"ab": 3, b"xy": 2}), 259)
    # (a, b) occurs 23 times, then (ab, ab) 10 times, then (x, y) 2 times
    assert [t for t, r in sorted(ranks.items(), key=lambda kv: kv[1])][256:] == [b"ab", b"abab", b"xy"]
    assert len(train_bpe(Counter({b"ab": 1}), 300)) == 256  # nothing occurs twice: stops early


def test_trained_file_loads_and_round_trips(tmp_path):
    texts = documents("tiny") * 3
    tok = train_tokenizer(texts, tmp_path / "sub" / "t.tiktoken", vocab_size=700)
    assert tok.vocab_size == 700 and (tok.bos_id, tok.eos_id) == (444, 445)
    again = load_tokenizer(tmp_path / "sub" / "t.tiktoken")
    assert again.fingerprint == tok.fingerprint
    for text in texts[:10]:
        assert again.decode(again.encode(text, bos=False, eos=False)) == text
    assert len(again.encode(" multiplication", bos=False, eos=False)) < len(" multiplication")


def test_retraining_reproduces_the_bundled_tokenizer(tmp_path):
    tok = train_tokenizer(documents("bundled", "train"), tmp_path / "kjv.tiktoken", vocab_size=2048)
    assert (tmp_path / "kjv.tiktoken").read_bytes() == BUNDLED_TOKENIZER.read_bytes()
    assert tok.fingerprint == load_tokenizer().fingerprint


def test_bad_trainer_input(tmp_path):
    with pytest.raises(DataError, match="vocab_size must be an integer >= 512"):
        train_tokenizer(["abc"], tmp_path / "t", vocab_size=300)
    with pytest.raises(DataError, match="no text"):
        train_tokenizer(["", ""], tmp_path / "t", vocab_size=600)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cannot write tokenizer file"):
        train_tokenizer(["abc abc"], tmp_path / "file" / "t", vocab_size=600)
