"""The corpora shipped inside the package: the bundled one (King James Bible) and a tiny test one.

The bundled corpus is 1,189 chapters (one document each), about 1.2M tokens with the bundled
tokenizer; every 20th chapter is held out as the validation split. It also ships pre-tokenized with
the bundled tokenizer, so the default training run starts without tokenizing anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
import pathlib

import numpy as np

from titan_data.errors import DataError, unknown_name

ASSETS = pathlib.Path(__file__).parent / "assets"
BUNDLED_TEXT = ASSETS / "kjv.jsonl.xz"
BUNDLED_TOKENS_META = ASSETS / "kjv.tokens.json"
TINY_TEXT = ASSETS / "tiny.jsonl"
SPLITS = ("train", "validation")

# Document i is in the validation split when i % period == period - 1.
_VALIDATION_PERIOD = {"bundled": 20, "tiny": 6}


@functools.lru_cache(maxsize=2)
def _all_documents(corpus: str) -> tuple[str, ...]:
    if corpus == "bundled":
        raw = lzma.decompress(BUNDLED_TEXT.read_bytes()).decode("utf-8")
    else:
        raw = TINY_TEXT.read_text(encoding="utf-8")
    return tuple(json.loads(line)["text"] for line in raw.splitlines() if line.strip())


def documents(corpus: str, split: str = "train") -> list[str]:
    """The texts of a shipped corpus ('bundled' or 'tiny') in one split ('train' or 'validation')."""
    if corpus not in _VALIDATION_PERIOD:
        raise unknown_name("shipped corpus", corpus, _VALIDATION_PERIOD)
    if split not in SPLITS:
        raise DataError(f"the {corpus} corpus has splits {', '.join(SPLITS)}; got split={split!r}")
    period = _VALIDATION_PERIOD[corpus]
    want_val = split == "validation"
    return [d for i, d in enumerate(_all_documents(corpus)) if (i % period == period - 1) == want_val]


def corpus_sha256(corpus: str) -> str:
    """Checksum of a shipped corpus file (ties the shipped tokens to the text they came from)."""
    path = BUNDLED_TEXT if corpus == "bundled" else TINY_TEXT
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundled_tokens_meta() -> dict:
    """What the shipped token files hold: tokenizer fingerprint, corpus checksum, counts per split."""
    return json.loads(BUNDLED_TOKENS_META.read_text())


@functools.lru_cache(maxsize=4)
def bundled_tokens(split: str) -> np.ndarray:
    """The shipped pre-tokenized bundled corpus (BOS doc EOS, concatenated) as a read-only uint16 array."""
    meta = bundled_tokens_meta()
    if split not in meta["splits"]:
        raise DataError(f"the bundled corpus has splits {', '.join(meta['splits'])}; got split={split!r}")
    info = meta["splits"][split]
    arr = np.frombuffer(lzma.decompress((ASSETS / info["file"]).read_bytes()), dtype=np.uint16)
    if arr.size != info["tokens"]:
        raise DataError(
            f"shipped token file {ASSETS / info['file']} holds {arr.size} tokens, its index "
            f"{BUNDLED_TOKENS_META} says {info['tokens']}: the package is damaged, reinstall it"
        )
    return arr
