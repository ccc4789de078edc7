"""Document sources: where text comes from, read as resumable, shardable streams of records.

`iter_docs(shard, num_shards, state)` yields `(state_before, record)`: handing `state_before` back
later restarts at that very record. Shard s of n reads records s, s+n, s+2n, ... (or, for Hugging
Face streams, whole files when the file count allows it), so shards are disjoint and together
cover the source. With `infinite=True` the stream starts over (epoch + 1) at its end.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import os
import pathlib
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from titan_data.errors import DataError


class DocSource(abc.ABC):
    """A source of records (a str, or a dict holding the text field)."""

    description: str

    @abc.abstractmethod
    def iter_docs(self, shard: int, num_shards: int, state: dict | None, *,
                  infinite: bool) -> Iterator[tuple[dict, Any]]: ...

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Changes when the data changes (keys token caches)."""

    def check(self, text_field: str) -> None:
        """Fail early, before any expensive work, on an empty source or a missing text field."""
        return None


class ListSource(DocSource):
    """Texts held in memory (the shipped corpora)."""

    def __init__(self, texts: list[str], description: str):
        self.texts = texts
        self.description = description

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for t in self.texts:
            digest.update(hashlib.sha256(t.encode()).digest())
        return digest.hexdigest()[:20]

    def check(self, text_field: str) -> None:
        if not self.texts:
            raise DataError(f"{self.description} has no documents")

    def iter_docs(self, shard, num_shards, state, *, infinite):
        state = state or {"epoch": 0, "index": 0}
        epoch, i = state["epoch"], state["index"]
        mine = range(shard, len(self.texts), num_shards)
        if not mine:
            raise DataError(
                f"{self.description} has {len(self.texts)} documents, fewer than the {num_shards} "
                "readers (data-parallel ranks x workers) sharing it: use fewer workers or more data"
            )
        while True:
            while i < len(mine):
                yield {"epoch": epoch, "index": i}, self.texts[mine[i]]
                i += 1
            if not infinite:
                return
            epoch, i = epoch + 1, 0


class HFSource(DocSource):
    """A Hugging Face `datasets` stream (local files or the hub), opened lazily in each process."""

    def __init__(self, opener: Callable[[], Any], description: str, fingerprint: str):
        self._opener = opener
        self.description = description
        self._fingerprint = fingerprint

    def fingerprint(self) -> str:
        return self._fingerprint

    def open(self):
        try:
            return self._opener()
        except DataError:
            raise
        except Exception as e:  # datasets raises many types for unreadable or unreachable data
            raise DataError(f"cannot open {self.description}: {type(e).__name__}: {e}") from None

    def check(self, text_field: str) -> None:
        try:
            first = next(iter(self.open().take(1)), None)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {self.description}: {type(e).__name__}: {e}") from None
        if first is None:
            raise DataError(f"{self.description} has no records")
        if text_field not in first:
            from titan_data.errors import unknown_name

            err = unknown_name("text field", text_field, first)
            raise DataError(f"{self.description}: {err} (set text_field to the column holding the text)")

    def iter_docs(self, shard, num_shards, state, *, infinite):
        from datasets.distributed import split_dataset_by_node

        state = state or {"epoch": 0, "hf": None}
        epoch, hf_state = state["epoch"], state["hf"]
        while True:
            ds = self.open()
            if num_shards > 1:
                ds = split_dataset_by_node(ds, rank=shard, world_size=num_shards)
            if hf_state is not None:
                ds.load_state_dict(hf_state)
            fresh, count, before = hf_state is None, 0, hf_state
            # .iter() rather than iter(ds): the latter re-splits by torch worker inside workers.
            try:
                for batch in ds.iter(batch_size=1):
                    yield {"epoch": epoch, "hf": before}, {k: v[0] for k, v in batch.items()}
                    before, count = ds.state_dict(), count + 1
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"error while reading {self.description}: {type(e).__name__}: {e}") from None
            if fresh and count == 0:
                raise DataError(f"{self.description} gave no records to reader {shard} of {num_shards} "
                                "(data-parallel ranks x workers): use fewer workers or more data")
            if not infinite:
                return
            epoch, hf_state = epoch + 1, None


def _load_dataset(*args, **kwargs):
    # Module level (with functools.partial) so that sources pickle into spawned workers.
    from datasets import load_dataset

    return load_dataset(*args, **kwargs)


# ---- local files -------------------------------------------------------------------------------

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text", ".text": "text",
             ".md": "text"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def _builder_of(path: pathlib.Path) -> str | None:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def local_files(path: str, split: str) -> tuple[str, list[pathlib.Path]]:
    """(builder, files) for a file or folder. A folder with a `<split>` subfolder or `<split>*`
    files uses those; otherwise the whole folder is the train split."""
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset_path {p} does not exist (expected a json/jsonl/parquet/txt file or a folder of them)")
    if p.is_file():
        files = [p]
    else:
        every = sorted(f for f in p.rglob("*") if f.is_file() and _builder_of(f) and not f.name.startswith("."))
        if not every:
            raise DataError(f"dataset folder {p} holds no {'/'.join(sorted(_BUILDERS))} files")
        by_split = [f for f in every if f.relative_to(p).parts[0] == split or f.name.startswith(split)]
        if by_split:
            files = by_split
        elif split == "train":
            files = every
        else:
            raise DataError(f"dataset folder {p} has no {split!r} data (expected a {split}/ subfolder "
                            f"or {split}* files); point this split's dataset_path at its files instead")
    kinds = {_builder_of(f) for f in files}
    if None in kinds:
        raise DataError(f"dataset file {files[0]} has an unsupported type: use {', '.join(sorted(_BUILDERS))}")
    if len(kinds) > 1:
        raise DataError(f"dataset_path {p} mixes file types ({', '.join(sorted(kinds))}): use one type")
    return kinds.pop(), files


def local_source(path: str, split: str, *, text_sample_by: str = "document") -> HFSource:
    builder, files = local_files(path, split)
    if text_sample_by not in ("line", "paragraph", "document"):
        raise DataError(f"text_sample_by must be 'line', 'paragraph' or 'document', got {text_sample_by!r}")
    digest = hashlib.sha256(builder.encode() + text_sample_by.encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    extra = {"sample_by": text_sample_by} if builder == "text" else {}
    opener = functools.partial(_load_dataset, builder, data_files=[str(f) for f in files], split="train",
                               streaming=True, **extra)
    where = str(files[0]) if len(files) == 1 else f"{path} ({len(files)} {builder} files)"
    return HFSource(opener, f"local dataset {where}", digest.hexdigest()[:20])


# ---- the hub -----------------------------------------------------------------------------------

def hub_reachable(timeout_s: float = 3.0) -> str | None:
    """None when the Hugging Face Hub looks reachable, else why not (checked in seconds)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides; let datasets try
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        return f"cannot connect to {url.hostname}:{port} ({e})"
    return None


def hub_source(name: str, config: str | None, split: str) -> HFSource:
    why = hub_reachable()
    if why:
        raise DataError(
            f"dataset {name!r} streams from the Hugging Face Hub, which is not reachable: {why}. "
            "Offline, use dataset='bundled' or local files (dataset='local', dataset_path=...)"
        )

    opener = functools.partial(_load_dataset, name, config, split=split, streaming=True)
    label = f"hub dataset {name}" + (f" ({config})" if config else "") + f" split {split!r}"
    return HFSource(opener, label, hashlib.sha256(label.encode()).hexdigest()[:20])
