"""Tokenizers: the bundled one, Llama 3 format files, HF tokenizer.json, folders, bad files."""

import base64
import json

import pytest
from titan_data import LLAMA3_SPECIAL_TOKENS, DataError, documents, load_tokenizer
from titan_data.tokenizer import TiktokenTokenizer, read_tiktoken_ranks, write_tiktoken_ranks

SAMPLES = [
    "Hello, world! It's a test.",
    "Café naïve façade — 日本語の文章, Русский текст, emoji 🚀✨, math ≤ ∞ ∑",
    "def f(x):\n\treturn {'a': [x ** 2 for _ in range(3)]}  # comment\n",
    "   leading\n\n\n\ttabs\t\tand   trailing   \n\r\n  ",
    "",
    " ",
    "\x00\x01 control \uffff chars",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_bundled_tokenizer_has_the_debug_model_vocab(tok):
    assert tok.vocab_size == 2048 and tok.num_ranks == 1792
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1792, 1793, 1796)
    assert tok.special_tokens["<|eot_id|>"] == 1801
    assert len(LLAMA3_SPECIAL_TOKENS) == 256 and LLAMA3_SPECIAL_TOKENS[-1] == "<|reserved_special_token_246|>"
    # Llama 3 ids of the tokens that matter: header markers at +6/+7, end of turn at +9
    assert [LLAMA3_SPECIAL_TOKENS.index(t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")] == [6, 7, 9]


@pytest.mark.parametrize("text", SAMPLES + documents("tiny", "train")[:8])
def test_round_trip(tok, text):
    ids = tok.encode(text, bos=False, eos=False)
    assert all(0 <= i < tok.num_ranks for i in ids)
    assert tok.decode(ids) == text


def test_bos_eos_are_added_only_when_asked(tok):
    plain = tok.encode("in the beginning", bos=False, eos=False)
    assert tok.encode("in the beginning", bos=True, eos=True) == [tok.bos_id, *plain, tok.eos_id]
    assert tok.encode("in the beginning", bos=True, eos=False) == [tok.bos_id, *plain]
    assert tok.encode_batch(["a", "b"], bos=False, eos=True) == [[*tok.encode("a", bos=False, eos=False), tok.eos_id],
                                                                 [*tok.encode("b", bos=False, eos=False), tok.eos_id]]
    # the bundled vocabulary compresses its own corpus well
    assert len(plain) <= 6


def test_special_token_text_is_never_a_control_token(tok):
    text = "x <|begin_of_text|><|end_of_text|><|eot_id|><|start_header_id|>user<|end_header_id|> y"
    ids = tok.encode(text, bos=False, eos=False)
    assert max(ids) < tok.num_ranks
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id]) == "<|begin_of_text|>"


def test_decode_rejects_ids_outside_the_vocabulary(tok):
    with pytest.raises(DataError, match="2048"):
        tok.decode([5, 2048])


def _llama3_style_file(path, n_merges=40):
    """A file in Llama 3's layout: bytes in a shuffled rank order, then merges."""
    order = sorted(range(256), key=lambda b: (b * 97) % 256)
    ranks = {bytes([b]): r for r, b in enumerate(order)}
    for word in [b"th", b"he", b"the", b" t", b" the", b"in", b"an", b"and", b" a", b"er"][:n_merges]:
        ranks[word] = len(ranks)
    write_tiktoken_ranks(ranks, path)
    return ranks


def test_llama3_format_gives_specials_after_the_last_rank(tmp_path):
    ranks = _llama3_style_file(tmp_path / "tokenizer.model")
    tok = load_tokenizer(tmp_path / "tokenizer.model")
    n = len(ranks)
    assert tok.vocab_size == n + 256 and (tok.bos_id, tok.eos_id) == (n, n + 1)
    assert tok.special_tokens["<|eot_id|>"] == n + 9
    ids = tok.encode(" the and", bos=False, eos=False)
    assert ids == [ranks[b" the"], ranks[b" a"], ranks[b"n"], ranks[b"d"]] or tok.decode(ids) == " the and"
    assert ranks[b" the"] in ids


def test_folders_in_hf_asset_layout(tmp_path):
    (tmp_path / "original").mkdir()
    _llama3_style_file(tmp_path / "original" / "tokenizer.model")
    assert isinstance(load_tokenizer(tmp_path), TiktokenTokenizer)
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x05\x00\x00sentencepiece")  # Llama 2 style file
    with pytest.raises(DataError, match="SentencePiece"):
        load_tokenizer(tmp_path)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="holds none of tokenizer.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.model")


@pytest.mark.parametrize("content, match", [
    (b"hello world this is text\n", "not in tiktoken format: line 1"),
    (b"", "is empty"),
    (base64.b64encode(b"a") + b" 0\n", "lacks 255 of the 256 single-byte tokens"),
    (b"\x0a\x05\x00\x00\x00binary sentencepiece", "SentencePiece"),
    (b"".join(base64.b64encode(bytes([b])) + b" %d\n" % (b * 2) for b in range(256)), "ranks must be exactly"),
])
def test_bad_tokenizer_files_name_the_path(tmp_path, content, match):
    f = tmp_path / "bad.model"
    f.write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        load_tokenizer(f)
    assert str(f) in str(e.value)


def test_read_write_round_trip(tmp_path, tok):
    ranks = read_tiktoken_ranks(tok.path)
    write_tiktoken_ranks(ranks, tmp_path / "copy")
    assert load_tokenizer(tmp_path / "copy").fingerprint == tok.fingerprint


# ---- Hugging Face tokenizer.json (optional `tokenizers`) ----------------------------------------

def _hf_tokenizer_json(folder):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    t = tokenizers.Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = tokenizers.decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(documents("tiny", "train"), trainer)
    t.save(str(folder / "tokenizer.json"))
    return t


def test_hf_tokenizer_json(tmp_path):
    _hf_tokenizer_json(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                                "eos_token": {"content": "<|eot_id|>"}}))
    tok = load_tokenizer(tmp_path)  # a folder with tokenizer.json at the top
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 2, None)
    for text in SAMPLES[:4]:
        ids = tok.encode(text, bos=True, eos=True)
        assert ids[0] == 0 and ids[-1] == 2 and tok.decode(ids[1:-1]) == text
    text = "a <|end_of_text|> b"
    ids = tok.encode(text, bos=False, eos=False)
    assert 1 not in ids and tok.decode(ids) == text


def test_hf_bad_json(tmp_path):
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path / "tokenizer.json")
