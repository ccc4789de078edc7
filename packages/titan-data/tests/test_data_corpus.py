"""The shipped corpora and the bundled tokenizer: sizes, splits, and that they match each other."""

import hashlib

import numpy as np
from titan_data import documents, load_tokenizer
from titan_data.corpus import TINY_TEXT, bundled_tokens, bundled_tokens_meta, corpus_sha256


def test_bundled_corpus_is_large_enough_and_split():
    train, val = documents("bundled", "train"), documents("bundled", "validation")
    assert (len(train), len(val)) == (1130, 59)
    assert train[0].startswith("Genesis 1\n\n1 In the beginning God created the heaven and the earth.")
    assert not set(train) & set(val)


def test_shipped_tokens_are_the_bundled_corpus_tokenized_by_the_bundled_tokenizer():
    tok, meta = load_tokenizer(), bundled_tokens_meta()
    assert meta["tokenizer_fingerprint"] == tok.fingerprint
    assert meta["corpus_sha256"] == corpus_sha256("bundled")
    for split in ("train", "validation"):
        arr = bundled_tokens(split)
        ids = tok.encode_batch(documents("bundled", split), bos=True, eos=True)
        assert np.array_equal(arr, np.concatenate([np.asarray(x, dtype=np.uint16) for x in ids]))
    assert bundled_tokens("train").size >= 1_000_000


def test_tiny_corpus_is_fixed():
    assert hashlib.sha256(TINY_TEXT.read_bytes()).hexdigest()[:16] == "f2f63e1d10748b2e"
    assert (len(documents("tiny", "train")), len(documents("tiny", "validation"))) == (31, 6)
