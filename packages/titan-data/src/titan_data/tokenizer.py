"""Tokenizers: the tiktoken-format BPE of Llama 3 (and Titan's bundled one), behind one small API.

A tiktoken file is one `base64(token bytes) rank` line per mergeable token. The 256 special tokens
of Llama 3 are appended after the last rank, so a file with 128,000 ranks gives Llama 3's ids
(bos 128000, eos 128001) and the bundled 1,792-rank file gives a 2,048-id vocabulary.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import pathlib
from collections.abc import Sequence

import tiktoken

from titan_data.errors import DataError

# Llama 3's pre-tokenizer split: contractions, letter runs, 1-3 digit groups, punctuation, spaces.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL_TOKENS = 256
_NAMED_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = tuple(_NAMED_SPECIALS) + tuple(
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + NUM_SPECIAL_TOKENS - len(_NAMED_SPECIALS))
)
BUNDLED_TOKENIZER = pathlib.Path(__file__).parent / "assets" / "titan_2k.tiktoken"


class Tokenizer(abc.ABC):
    """Text <-> token ids. Special-token text inside ordinary input is encoded as plain text."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    fingerprint: str  # identifies the exact vocabulary: used to key and check token caches
    path: str

    @abc.abstractmethod
    def _encode_plain(self, texts: list[str]) -> list[list[int]]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids`; special tokens come back as their text, bad UTF-8 as U+FFFD."""

    def encode(self, text: str, *, bos: bool, eos: bool) -> list[int]:
        """Token ids of `text`, with BOS first and/or EOS last when asked."""
        return self.encode_batch([text], bos=bos, eos=eos)[0]

    def encode_batch(self, texts: list[str], *, bos: bool, eos: bool) -> list[list[int]]:
        """`encode` for many texts at once (faster: one call into the native encoder)."""
        for t in texts:
            if not isinstance(t, str):
                raise DataError(f"encode takes str, got {type(t).__name__}: {t!r:.80}")
        out = self._encode_plain(texts)
        if bos or eos:
            head = [self._need("bos_id")] if bos else []
            tail = [self._need("eos_id")] if eos else []
            out = [head + ids + tail for ids in out]
        return out

    def _need(self, attr: str) -> int:
        value = getattr(self, attr)
        if value is None:
            raise DataError(f"tokenizer {self.path} has no {attr[:3].upper()} token")
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, vocab_size={self.vocab_size})"


class TiktokenTokenizer(Tokenizer):
    """A tiktoken-format BPE with Llama 3's split pattern and 256 special tokens after the ranks."""

    def __init__(self, ranks: dict[bytes, int], *, path: str = "<memory>", pattern: str = LLAMA3_PATTERN):
        self.path = path
        n = len(ranks)
        self.special_tokens = {tok: n + i for i, tok in enumerate(LLAMA3_SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            name=f"titan-{n}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self.num_ranks = n
        self.vocab_size = n + NUM_SPECIAL_TOKENS
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        digest = hashlib.sha256(pattern.encode())
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            digest.update(base64.b64encode(tok) + b" %d\n" % rank)
        self.fingerprint = "tiktoken-" + digest.hexdigest()[:20]

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        # encode_ordinary never produces special ids: "<|eot_id|>" in the input stays plain text.
        if len(texts) == 1:
            return [self._enc.encode_ordinary(texts[0])]
        return self._enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"cannot decode token id {bad[0]}: the vocabulary has ids 0..{self.vocab_size - 1}")
        return self._enc.decode(ids, errors="replace")


def read_tiktoken_ranks(path: str | pathlib.Path) -> dict[bytes, int]:
    """Parse a tiktoken BPE file; a DataError names the path, line and what was expected."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read tokenizer file {path}: {e.strerror or e}") from None
    if data[:1] in (b"\x0a", b"\x08") and b"\x00" in data[:64]:
        raise DataError(
            f"tokenizer file {path} looks like a SentencePiece model (Llama 2 style), which is not "
            "supported: pass a tiktoken file (Llama 3 original/tokenizer.model) or a tokenizer.json"
        )
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            raise DataError(
                f"tokenizer file {path} is not in tiktoken format: line {lineno} is {line[:60]!r}, "
                "expected '<base64 token> <rank>'"
            ) from None
        if token in ranks:
            raise DataError(f"tokenizer file {path}: token {token!r} appears twice (line {lineno})")
        ranks[token] = rank
    if not ranks:
        raise DataError(f"tokenizer file {path} is empty: expected '<base64 token> <rank>' lines")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise DataError(f"tokenizer file {path}: ranks must be exactly 0..{len(ranks) - 1}, each once")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise DataError(
            f"tokenizer file {path} lacks {len(missing)} of the 256 single-byte tokens (e.g. byte "
            f"{missing[0]}): a byte-level BPE needs all of them"
        )
    return ranks


def write_tiktoken_ranks(ranks: dict[bytes, int], path: str | pathlib.Path) -> None:
    """Write ranks in tiktoken format, in rank order."""
    lines = [base64.b64encode(tok) + b" %d\n" % r for tok, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    pathlib.Path(path).write_bytes(b"".join(lines))


_TIKTOKEN_NAMES = ("tokenizer.model", "original/tokenizer.model")


def load_tokenizer(path: str | pathlib.Path | None = None) -> Tokenizer:
    """Load a tokenizer.

    `path`: None for the bundled 2,048-id tokenizer; a tiktoken file (Llama 3 `tokenizer.model`);
    a Hugging Face `tokenizer.json` (needs the `tokenizers` package: extra `hf`); or a folder
    holding `tokenizer.model`, `original/tokenizer.model` or `tokenizer.json` (an HF asset folder).
    """
    if path is None:
        return _load_tiktoken(BUNDLED_TOKENIZER)
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        for name in _TIKTOKEN_NAMES:
            if (p / name).is_file():
                try:
                    return _load_tiktoken(p / name)
                except DataError:
                    if not (p / "tokenizer.json").is_file():
                        raise  # a SentencePiece tokenizer.model beside a tokenizer.json: use the json
        if (p / "tokenizer.json").is_file():
            return _load_hf(p / "tokenizer.json")
        raise DataError(
            f"tokenizer folder {p} holds none of tokenizer.model, original/tokenizer.model, tokenizer.json"
        )
    if not p.exists():
        raise DataError(f"tokenizer path {p} does not exist (expected a tiktoken file, a tokenizer.json or a folder)")
    if p.suffix == ".json":
        return _load_hf(p)
    return _load_tiktoken(p)


def _load_tiktoken(path: pathlib.Path) -> TiktokenTokenizer:
    return TiktokenTokenizer(read_tiktoken_ranks(path), path=str(path))


def _load_hf(path: pathlib.Path) -> Tokenizer:
    from titan_data.hf_tokenizer import HFTokenizer

    return HFTokenizer(path)
