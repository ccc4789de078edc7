"""`build_dataloader`: one call from a dataset name and a layout to a checkpointable loader."""

from __future__ import annotations

import itertools
import pathlib

from titan_data.errors import DataError, check_positive
from titan_data.pretokenized import PretokenizedLoader
from titan_data.registry import DATASETS, DataRequest, get_dataset, source_texts
from titan_data.streaming import BAD_RECORD_POLICIES, PackConfig, StreamingLoader
from titan_data.tokenizer import Tokenizer
from titan_data.tokens import INDEX, TokenStore, write_token_dir

MODES = ("pretokenized", "streaming")


def resolve_dataset(dataset: str, dataset_path: str | None) -> tuple[str, str | None]:
    """A dataset given as a path instead of a name: a token folder (it holds index.json, or
    train/index.json) becomes 'tokens', other files and folders 'local'. Names pass unchanged."""
    if dataset in DATASETS or not isinstance(dataset, str):
        return dataset, dataset_path
    path = pathlib.Path(dataset).expanduser()
    if not path.exists():
        return dataset, dataset_path  # get_dataset names the closest known dataset
    if dataset_path:
        raise DataError(f"dataset {dataset!r} is a path and dataset_path {dataset_path!r} is given too: "
                        "give the path once (dataset='local' or 'tokens' with dataset_path, or the path alone)")
    is_tokens = path.is_dir() and ((path / INDEX).is_file() or (path / "train" / INDEX).is_file())
    return ("tokens" if is_tokens else "local"), str(path)


def _request(dataset: str, tokenizer: Tokenizer, dataset_path: str | None, **kw) -> tuple:
    spec = get_dataset(dataset)
    if kw.get("config") and spec.name not in ("hub", "c4"):
        raise DataError(f"dataset_config {kw['config']!r} applies to Hugging Face Hub datasets (hub, c4), "
                        f"not to {dataset!r}")
    if not isinstance(tokenizer, Tokenizer):
        raise DataError(f"tokenizer must be a titan_data Tokenizer (from load_tokenizer), got {type(tokenizer).__name__}")
    if spec.path == "required" and not dataset_path:
        raise DataError(f"dataset {dataset!r} needs dataset_path: {spec.description}")
    if spec.path == "forbidden" and dataset_path:
        raise DataError(f"dataset {dataset!r} takes no dataset_path (got {dataset_path!r}): {spec.description}; "
                        "use dataset='local' for your own files")
    if not isinstance(kw["split"], str) or not kw["split"]:
        raise DataError(f"split must be a non-empty string such as 'train' or 'validation', got {kw['split']!r}")
    if kw["on_bad_record"] not in BAD_RECORD_POLICIES:
        raise DataError(f"on_bad_record must be one of {', '.join(BAD_RECORD_POLICIES)}, got {kw['on_bad_record']!r}")
    path = str(dataset_path) if dataset_path else None
    return spec, DataRequest(tokenizer=tokenizer, path=path, **kw)


def build_dataloader(
    dataset: str,
    *,
    tokenizer: Tokenizer,
    seq_len: int,
    local_batch_size: int,
    dp_rank: int = 0,
    dp_world_size: int = 1,
    dataset_path: str | None = None,
    split: str = "train",
    text_field: str = "text",
    num_workers: int = 0,
    seed: int = 0,
    infinite: bool = True,
    mode: str | None = None,
    dataset_config: str | None = None,
    text_sample_by: str = "document",
    on_bad_record: str = "skip",
    cache_dir: str | None = None,
) -> StreamingLoader | PretokenizedLoader:
    """A loader yielding `(inputs, labels)` LongTensors [local_batch_size, seq_len] for one dp rank.

    `dataset`: a name in `DATASETS` (bundled, tiny, c4, hub, local, tokens), or the path of a file
    or folder (read as 'local', or as 'tokens' when it is a token folder). `mode`: "pretokenized"
    (layout-independent, resumable on any dp degree; the default for bundled/tiny/tokens) or
    "streaming" (tokenize on the fly; the default for c4/hub/local). `dataset_path`: files or
    folder for local, hub name for hub, token folder for tokens. `dataset_config`: hub config.
    `text_sample_by`: for .txt files, one document per "document" (file), "paragraph" or "line".
    `on_bad_record`: "skip" (with a warning; streaming loaders count them in
    `loader.skipped_records`) or "raise" for a record whose text field is not a string.
    `seed`: the pre-tokenized mode's per-epoch order (streaming reads documents in the source's
    order). `cache_dir`: where data tokenized on first use is kept.
    Every user mistake raises DataError before any expensive work.
    """
    check_positive("seq_len", seq_len)
    check_positive("local_batch_size", local_batch_size)
    check_positive("dp_world_size", dp_world_size)
    if isinstance(dp_rank, bool) or not isinstance(dp_rank, int) or not 0 <= dp_rank < dp_world_size:
        raise DataError(f"dp_rank must be an integer in [0, dp_world_size={dp_world_size}), got {dp_rank!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    dataset, dataset_path = resolve_dataset(dataset, dataset_path)
    spec, req = _request(dataset, tokenizer, dataset_path, split=split, config=dataset_config,
                         text_field=text_field, text_sample_by=text_sample_by, on_bad_record=on_bad_record,
                         cache_dir=cache_dir)
    mode = mode or spec.default_mode
    if mode not in MODES:
        raise DataError(f"mode must be one of {', '.join(MODES)} (or None for the dataset's default), got {mode!r}")
    if mode == "pretokenized":
        if spec.tokens is None:
            raise DataError(
                f"dataset {dataset!r} streams without end, so it has no pre-tokenized mode: write token shards "
                f"with tools/pretokenize.py --dataset {dataset} --max-documents N, then use dataset='tokens'"
            )
        store = spec.tokens(req)
        _check_tokenizer(store, tokenizer)
        return PretokenizedLoader(store, seq_len=seq_len, local_batch_size=local_batch_size, dp_rank=dp_rank,
                                  dp_world_size=dp_world_size, seed=seed, num_workers=num_workers, infinite=infinite)
    if spec.docs is None:
        raise DataError(f"dataset {dataset!r} holds tokens, not text: it has only the pretokenized mode")
    source = spec.docs(req)
    source.check(text_field)
    cfg = PackConfig(tokenizer=tokenizer, seq_len=seq_len, batch_size=local_batch_size, text_field=text_field,
                     on_bad_record=on_bad_record, infinite=infinite)
    return StreamingLoader(source, cfg, dp_rank=dp_rank, dp_world_size=dp_world_size, num_workers=num_workers)


def _check_tokenizer(store: TokenStore, tokenizer: Tokenizer) -> None:
    if store.fingerprint != tokenizer.fingerprint:
        raise DataError(
            f"{store.source} was tokenized with tokenizer {store.fingerprint}, but the loader was given "
            f"{tokenizer.fingerprint} ({tokenizer.path}): pass the same tokenizer or re-run the pretokenizer"
        )


def pretokenize(
    dataset: str,
    out_dir: str | pathlib.Path,
    *,
    tokenizer: Tokenizer,
    dataset_path: str | None = None,
    split: str = "train",
    text_field: str = "text",
    dataset_config: str | None = None,
    text_sample_by: str = "document",
    on_bad_record: str = "skip",
    max_documents: int | None = None,
    shard_tokens: int = 1 << 28,
) -> TokenStore:
    """Tokenize one split of a dataset into a token folder (BOS doc EOS ..., memmapped shards + index)
    for `build_dataloader("tokens", dataset_path=out_dir)`. `max_documents` caps endless streams."""
    if max_documents is not None:
        check_positive("max_documents", max_documents)
    check_positive("shard_tokens", shard_tokens)
    dataset, dataset_path = resolve_dataset(dataset, dataset_path)
    spec, req = _request(dataset, tokenizer, dataset_path, split=split, config=dataset_config,
                         text_field=text_field, text_sample_by=text_sample_by, on_bad_record=on_bad_record,
                         cache_dir=None)
    if spec.docs is None:
        raise DataError(f"dataset {dataset!r} is already tokenized")
    source = spec.docs(req)
    source.check(text_field)
    texts = itertools.islice(source_texts(source, req), max_documents)
    return write_token_dir(out_dir, texts, tokenizer, shard_tokens=shard_tokens, source=source.description)
