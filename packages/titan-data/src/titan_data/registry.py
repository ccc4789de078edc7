"""The dataset registry: name -> how to read its documents and/or its pre-tokenized windows."""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from titan_data import corpus
from titan_data.errors import DataError, unknown_name
from titan_data.sources import DocSource, ListSource, hub_source, local_source
from titan_data.streaming import PackConfig, _text_of
from titan_data.tokenizer import Tokenizer
from titan_data.tokens import INDEX, TokenStore, open_token_dir, write_token_dir


@dataclass(frozen=True)
class DataRequest:
    """Everything a registry entry may need to open one split of a dataset (the tokenizer only
    for token stores)."""

    tokenizer: Tokenizer | None
    split: str = "train"
    path: str | None = None
    config: str | None = None
    text_field: str = "text"
    text_sample_by: str = "document"
    on_bad_record: str = "skip"
    cache_dir: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset. `docs` opens its documents (streaming mode); `tokens` its token store
    (pre-tokenized mode); either may be None when that mode cannot apply."""

    name: str
    description: str
    default_mode: str
    path: str  # "required", "forbidden" or "optional": what dataset_path means for it
    docs: Callable[[DataRequest], DocSource] | None
    tokens: Callable[[DataRequest], TokenStore] | None


def default_cache_dir() -> pathlib.Path:
    """Where tokenized-on-first-use data is cached: $TITAN_DATA_CACHE or ~/.cache/titan-data."""
    return pathlib.Path(os.environ.get("TITAN_DATA_CACHE") or "~/.cache/titan-data").expanduser()


def source_texts(source: DocSource, req: DataRequest) -> Iterator[str]:
    """Every usable text of a source once, in order (malformed records per `on_bad_record`)."""
    cfg = PackConfig(tokenizer=req.tokenizer, seq_len=1, batch_size=1, text_field=req.text_field,
                     on_bad_record=req.on_bad_record, infinite=False)
    for where, record in source.iter_docs(0, 1, None, infinite=False):
        text = _text_of(record, cfg, source, where)
        if text is not None:
            yield text


def cached_tokens(name: str, source: DocSource, req: DataRequest) -> TokenStore:
    """Tokenize a finite source once into the cache folder (keyed by data, tokenizer and field)."""
    key = hashlib.sha256("|".join([source.fingerprint(), req.tokenizer.fingerprint, req.text_field,
                                    req.split, req.on_bad_record]).encode()).hexdigest()[:16]
    folder = pathlib.Path(req.cache_dir).expanduser() if req.cache_dir else default_cache_dir()
    folder = folder / f"{name}-{req.split}-{key}"
    if (folder / INDEX).is_file():
        return open_token_dir(folder)
    source.check(req.text_field)
    return write_token_dir(folder, source_texts(source, req), req.tokenizer, source=source.description)


def _list_source(name: str) -> Callable[[DataRequest], DocSource]:
    return lambda req: ListSource(corpus.documents(name, req.split), f"the {name} corpus ({req.split} split)")


def _bundled_tokens(req: DataRequest) -> TokenStore:
    meta = corpus.bundled_tokens_meta()
    if req.tokenizer.fingerprint == meta["tokenizer_fingerprint"]:
        return TokenStore.from_arrays([corpus.bundled_tokens(req.split)], fingerprint=meta["tokenizer_fingerprint"],
                                      source=f"the bundled corpus ({req.split} split)")
    return cached_tokens("bundled", _list_source("bundled")(req), req)


def _tiny_tokens(req: DataRequest) -> TokenStore:
    ids = req.tokenizer.encode_batch(corpus.documents("tiny", req.split), bos=True, eos=True)
    dtype = np.uint16 if req.tokenizer.vocab_size <= 1 << 16 else np.uint32
    arr = np.concatenate([np.asarray(x, dtype=dtype) for x in ids])
    return TokenStore.from_arrays([arr], fingerprint=req.tokenizer.fingerprint,
                                  source=f"the tiny corpus ({req.split} split)")


def _local_docs(req: DataRequest) -> DocSource:
    return local_source(req.path, req.split, text_sample_by=req.text_sample_by)


def _local_tokens(req: DataRequest) -> TokenStore:
    return cached_tokens("local", _local_docs(req), req)


def _token_folder(req: DataRequest) -> TokenStore:
    root = pathlib.Path(req.path).expanduser()
    if (root / req.split / INDEX).is_file():
        return open_token_dir(root / req.split)
    if req.split != "train" and (root / INDEX).is_file():
        raise DataError(f"token folder {root} has no {req.split}/ subfolder with an {INDEX}: point this "
                        f"split's dataset_path at its own token folder")
    return open_token_dir(root)


def _hub_docs(req: DataRequest) -> DocSource:
    return hub_source(req.path, req.config, req.split)


def _c4_docs(req: DataRequest) -> DocSource:
    return hub_source("allenai/c4", req.config or "en", req.split)


DATASETS: dict[str, DatasetSpec] = {
    "bundled": DatasetSpec(
        "bundled", "King James Bible, 1.2M tokens, shipped in the package (splits train, validation); "
        "pre-tokenized with the bundled tokenizer", "pretokenized", "forbidden", _list_source("bundled"), _bundled_tokens),
    "tiny": DatasetSpec(
        "tiny", "37 short mixed documents (prose, code, unicode) for tests (splits train, validation)",
        "pretokenized", "forbidden", _list_source("tiny"), _tiny_tokens),
    "c4": DatasetSpec(
        "c4", "allenai/c4 'en' streamed from the Hugging Face Hub (needs a network; splits train, validation)",
        "streaming", "forbidden", _c4_docs, None),
    "hub": DatasetSpec(
        "hub", "any Hugging Face Hub dataset, streamed: dataset_path=name, dataset_config=config",
        "streaming", "required", _hub_docs, None),
    "local": DatasetSpec(
        "local", "json / jsonl / parquet / txt files or a folder of them at dataset_path",
        "streaming", "required", _local_docs, _local_tokens),
    "tokens": DatasetSpec(
        "tokens", "a token folder written by tools/pretokenize.py at dataset_path",
        "pretokenized", "required", None, _token_folder),
}


def get_dataset(name: str) -> DatasetSpec:
    """The registry entry for `name`, or a DataError listing the known names and the closest one."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name]
